//! The admin API's OpenAPI document, built from the route table ([`super::routes`]): the
//! operations come from each handler's `#[utoipa::path]`, each with the role its route entry
//! gives it.

use utoipa::{Modify, OpenApi};

use super::routes::Route;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fanout admin API",
        description = "Register topics, manage subscriptions, see lag, replay and skip. Errors are application/problem+json with a stable code. Each operation names the role it will require (x-fanout-role: open, viewer, operator, admin); roles are not checked yet: the admin token may call every operation."
    ),
    security(("bearer" = [])),
    tags(
        (name = "topics", description = "Kafka topics fanout reads"),
        (name = "subscriptions", description = "Who receives a topic's records, and how"),
        (name = "operations", description = "Lag, replay and skip, pause, dead-letter redrive"),
        (name = "shards", description = "This shard and the cluster"),
        (name = "probes", description = "Health, readiness, metrics (no token needed)"),
    )
)]
#[derive(Debug)]
struct ApiDoc;

/// The OpenAPI document of the admin API (served at `/openapi.json`, browsable at `/docs`):
/// every route's operation, with the role it requires (`x-fanout-role`), the schemas they
/// use, and what every `/v1` operation shares.
pub fn document(routes: &[Route]) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_default();
    for route in routes {
        doc.paths.merge(route.paths());
        for (name, schema) in route.schemas() {
            components.schemas.insert(name.clone(), schema.clone());
        }
    }
    for m in [&BearerAuth as &dyn Modify, &ProblemResponses] {
        m.modify(&mut doc);
    }
    doc
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Adds what every `/v1` operation shares, from its shape: the `{topic}` and `{name}` path
/// parameters; the error responses 401 for all, 400 with a path, query or body, 404 under a
/// topic, 413/415/422 with a body. Handlers declare only their own (query parameters;
/// success, 409, 503, a 422 of their own).
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        // Path parameters, in path order, each described once here.
        fn path_params(op: &mut Operation, path: &str) {
            let named = [
                ("{topic}", "topic", "Registered topic"),
                ("{name}", "name", "Subscription name"),
            ];
            let params = op.parameters.get_or_insert_with(Vec::new);
            for (i, (_, name, what)) in named
                .iter()
                .filter(|(seg, ..)| path.contains(seg))
                .enumerate()
            {
                let exists = params
                    .iter()
                    .any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if p.name == *name));
                if exists {
                    continue;
                }
                let param = ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Path)
                    .description(Some(*what))
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build();
                params.insert(i.min(params.len()), param.into());
            }
            if params.is_empty() {
                op.parameters = None;
            }
        }
        fn add(op: &mut Operation, status: &str, what: &str) {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(what)
                        .content(
                            "application/problem+json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Problem")))
                                .build(),
                        )
                        .build()
                        .into()
                });
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                path_params(op, path);
                let body = op.request_body.is_some();
                let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                add(op, "401", "Missing or wrong bearer token");
                if params || body {
                    add(op, "400", "A bad field, path or query");
                }
                if path.contains("{topic}") {
                    add(op, "404", "No such topic or subscription");
                }
                if body {
                    add(op, "413", "Body over 64 KiB");
                    add(op, "415", "Not JSON");
                    add(op, "422", "Unreadable JSON body");
                }
            }
        }
    }
}
