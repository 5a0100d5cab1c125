use super::*;

fn parse(s: &str) -> Result<Discovery, Error> {
    s.parse()
}

#[test]
fn good_strings_parse() {
    let cases = [
        (
            "http://127.0.0.1:50051",
            Discovery::Static(vec!["http://127.0.0.1:50051".into()]),
        ),
        (
            " http://a:50051, http://b:50052 ,http://a:50051",
            Discovery::Static(vec!["http://a:50051".into(), "http://b:50052".into()]),
        ),
        (
            "https://fanout.example:443/",
            Discovery::Static(vec!["https://fanout.example:443/".into()]),
        ),
        (
            "http://[::1]:50051",
            Discovery::Static(vec!["http://[::1]:50051".into()]),
        ),
        (
            "dns://fanout-headless.default.svc.cluster.local:50051",
            Discovery::Dns {
                host: "fanout-headless.default.svc.cluster.local".into(),
                port: 50051,
            },
        ),
        (
            "dns://[::1]:7",
            Discovery::Dns {
                host: "::1".into(),
                port: 7,
            },
        ),
        (
            "shards+http://127.0.0.1:8080",
            Discovery::Admin {
                url: "http://127.0.0.1:8080".into(),
                token: None,
            },
        ),
        (
            "shards+https://gateway/fanout/",
            Discovery::Admin {
                url: "https://gateway/fanout".into(),
                token: None,
            },
        ),
    ];
    for (s, want) in cases {
        assert_eq!(parse(s).unwrap(), want, "{s}");
        // What Display writes parses back to the same.
        assert_eq!(parse(&want.to_string()).unwrap(), want, "{s}");
    }
}

#[test]
fn bad_strings_say_what_is_wrong() {
    let cases = [
        ("", "no endpoint given"),
        ("   ", "no endpoint given"),
        ("127.0.0.1:50051", "http://<host>:<port>"),
        ("grpc://a:1", "http://<host>:<port>"),
        ("http://", "http://<host>:<port>"),
        ("http://a:50051/v1", "no path"),
        ("http://user@a:50051", "no user name"),
        ("http://a:1,,http://b:2", "empty endpoint"),
        ("http://a:1,dns://b:2", "stand alone"),
        ("http://a:1,shards+http://b:2", "stand alone"),
        ("dns://fanout", "no port"),
        ("dns://:50051", "no name"),
        ("dns://fanout:0", "1 to 65535"),
        ("dns://fanout:70000", "1 to 65535"),
        ("dns://fanout:http", "1 to 65535"),
        ("dns://fanout:1/x", "dns://<name>:<port>"),
        ("dns://a,b:1", "dns://<name>:<port>"),
        ("dns://fan out:1", "not a DNS name"),
        ("dns://::1:50051", "between [ ]"),
        ("dns://[nope]:1", "not an IPv6 address"),
        ("dns://[::1]", "no port"),
        ("shards+grpc://a:1", "shards+http://<host>:<port>"),
        ("shards+http://", "shards+http://<host>:<port>"),
        ("shards+http://a:8080/?x=1", "no query"),
    ];
    for (s, why) in cases {
        match parse(s) {
            Err(Error::BadEndpoint(m)) => assert!(m.contains(why), "{s}: {m}"),
            other => panic!("{s}: {other:?}"),
        }
    }
}

#[test]
fn the_token_is_set_apart_from_the_string_and_never_shown() {
    let d = parse("shards+http://a:8080")
        .unwrap()
        .with_token(Some("s3cret".into()));
    assert_eq!(
        d,
        Discovery::Admin {
            url: "http://a:8080".into(),
            token: Some("s3cret".into())
        }
    );
    assert!(!format!("{d:?}").contains("s3cret"));
    assert!(!d.to_string().contains("s3cret"));
    // Other kinds ignore it.
    let s = parse("http://a:1").unwrap();
    assert_eq!(s.clone().with_token(Some("t".into())), s);
    assert!(!s.is_dynamic() && d.is_dynamic());
}

#[tokio::test]
async fn dns_discovery_finds_every_address_of_localhost() {
    let d = Discovery::Dns {
        host: "localhost".into(),
        port: 50051,
    };
    let found = d.resolve().await.unwrap();
    assert!(!found.is_empty());
    for e in &found {
        assert!(
            e == "http://127.0.0.1:50051" || e == "http://[::1]:50051",
            "{found:?}"
        );
    }
    let mut sorted = found.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, found);
}

#[tokio::test]
async fn static_discovery_checks_its_endpoints() {
    let d = Discovery::Static(vec![
        "http://b:2".into(),
        "http://a:1".into(),
        "http://b:2".into(),
    ]);
    assert_eq!(d.resolve().await.unwrap(), ["http://b:2", "http://a:1"]);
    assert!(matches!(
        Discovery::Static(vec![]).resolve().await,
        Err(Error::BadEndpoint(_))
    ));
    assert!(matches!(
        Discovery::Static(vec!["a:1".into()]).resolve().await,
        Err(Error::BadEndpoint(_))
    ));
}
