//! `docs/API.md`, generated from the OpenAPI document so that the two cannot disagree. The
//! test fails when the file is stale; `FANOUT_BLESS=1 cargo test -p fanout-server --lib
//! api_md` rewrites it.

use std::fmt::Write as _;

use serde_json::Value;

use super::{ROLE_EXTENSION, document, routes};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn schema_name(s: &Value) -> String {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[`{name}`](#{})", name.to_lowercase());
    }
    if let Some(items) = s.get("items") {
        return format!("array of {}", schema_name(items));
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = one.iter().map(schema_name).collect();
        return names.join(" or ");
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let v: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or("?")))
            .collect();
        return v.join(" \\| ");
    }
    match s.get("type") {
        Some(Value::String(t)) if t == "object" => match s.get("additionalProperties") {
            Some(a) if a.is_object() => format!("map of {}", schema_name(a)),
            _ => "object".into(),
        },
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => {
            let v: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            v.join(" or ")
        }
        _ => "any".into(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The Markdown of the whole API.
pub fn render() -> String {
    let doc = serde_json::to_value(document(&routes::all())).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Admin API\n\nGenerated from the OpenAPI document the server serves at `/openapi.json` \
         (browsable at `/docs`) by `fanout-server/src/admin/api_md.rs`; do not edit by hand \
         (`FANOUT_BLESS=1 cargo test -p fanout-server --lib api_md` regenerates it).\n\n{}\n\n\
         Requests need `Authorization: Bearer <token>` unless the server runs with \
         `--admin-no-auth`; `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs` \
         need none. Errors are `application/problem+json` documents ([`Problem`](#problem)) \
         with a stable `code` and, when one field is at fault, `field`.\n\n\
         Each endpoint names the role it requires (`x-fanout-role` in the document): \
         `viewer` reads, `operator` also operates subscriptions (seek, pause, resume, \
         redrive), `admin` also changes topics and subscriptions; `open` needs no token. \
         Roles are declared, not checked yet: the admin token may call every endpoint.\n",
        one_line(doc["info"]["description"].as_str().unwrap_or(""))
    );
    let _ = writeln!(out, "## Endpoints\n");
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    ops.push((path.clone(), m, op.clone()));
                }
            }
        }
    }
    for (path, method, op) in &ops {
        let _ = writeln!(out, "### `{} {path}`\n", method.to_uppercase());
        let summary = [op.get("summary"), op.get("description")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(one_line)
            .collect::<Vec<_>>()
            .join(" ");
        if !summary.is_empty() {
            let _ = writeln!(out, "{summary}\n");
        }
        if let Some(role) = op.get(ROLE_EXTENSION).and_then(Value::as_str) {
            let _ = writeln!(out, "Role: `{role}`\n");
        }
        if let Some(params) = op.get("parameters").and_then(Value::as_array) {
            let _ = writeln!(out, "| parameter | in | type | |\n|---|---|---|---|");
            for p in params {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    p["name"].as_str().unwrap_or("?"),
                    p["in"].as_str().unwrap_or("?"),
                    schema_name(&p["schema"]),
                    one_line(p["description"].as_str().unwrap_or(""))
                );
            }
            out.push('\n');
        }
        if let Some(body) = op.get("requestBody") {
            let schema = &body["content"]["application/json"]["schema"];
            let _ = writeln!(out, "Request body (JSON): {}\n", schema_name(schema));
        }
        let _ = writeln!(out, "| status | meaning | body |\n|---|---|---|");
        if let Some(responses) = op["responses"].as_object() {
            for (status, r) in responses {
                let body = r["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .map(|c| schema_name(&c["schema"]))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {status} | {} | {body} |",
                    one_line(r["description"].as_str().unwrap_or(""))
                );
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Schemas\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, s) in schemas {
            let _ = writeln!(out, "### {name}\n");
            if let Some(d) = s.get("description").and_then(Value::as_str) {
                let _ = writeln!(out, "{}\n", one_line(d));
            }
            match s.get("properties").and_then(Value::as_object) {
                Some(props) => {
                    let required: Vec<&str> = s["required"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let _ = writeln!(out, "| field | type | required | |\n|---|---|---|---|");
                    for (field, p) in props {
                        let _ = writeln!(
                            out,
                            "| `{field}` | {} | {} | {} |",
                            schema_name(p),
                            if required.contains(&field.as_str()) {
                                "yes"
                            } else {
                                "no"
                            },
                            one_line(p["description"].as_str().unwrap_or(""))
                        );
                    }
                }
                None => {
                    let _ = writeln!(out, "{}", schema_name(s));
                }
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn api_md_is_generated_from_the_openapi_document() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md");
    let fresh = render();
    if std::env::var_os("FANOUT_BLESS").is_some() {
        std::fs::write(path, &fresh).expect("write docs/API.md");
        return;
    }
    let current = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        current == fresh,
        "docs/API.md is stale: run `FANOUT_BLESS=1 cargo test -p fanout-server --lib api_md`"
    );
}
