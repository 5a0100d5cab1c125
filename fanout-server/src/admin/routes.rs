//! Every admin route, declared once: its handler, whose `#[utoipa::path]` gives the method,
//! the path and the OpenAPI operation, and the role it requires. The router, the OpenAPI
//! document and the route tests are all built from these entries: adding an endpoint is
//! one entry in its file's `routes()` plus its handler.

use axum::routing::MethodRouter;
use utoipa::openapi::path::{Operation, PathItem, Paths};
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa_axum::router::UtoipaMethodRouter;

use super::{AdminState, operate, probes, shards, subscriptions, topics};

/// The OpenAPI extension that names an operation's role.
pub const ROLE_EXTENSION: &str = "x-fanout-role";

/// Who may call a route. Each role may do what the ones before it may: an operator what a
/// viewer may, an admin what an operator may. Declared here and shown in the OpenAPI
/// document; until roles are checked, a valid admin token may call every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Anyone, without credentials: the probes and the metrics.
    Open,
    /// Reads: topics, subscriptions, lag, shards.
    Viewer,
    /// Operates existing subscriptions: seek (replay, skip), pause, resume, redrive.
    Operator,
    /// Changes what fanout reads and who receives it: topics, subscriptions and their
    /// settings.
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Admin => "admin",
        }
    }
}

/// One admin route: a method and a path, its handler and operation, and its role.
pub struct Route {
    /// Who may call it.
    pub access: Access,
    /// The path, in axum's and OpenAPI's syntax alike (`/v1/topics/{topic}`).
    pub path: String,
    /// The OpenAPI item holding the route's one operation.
    item: PathItem,
    /// The schemas its operation refers to.
    schemas: Vec<(String, RefOr<Schema>)>,
    /// The handler, for the route's method.
    handler: MethodRouter<AdminState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("access", &self.access)
            .field("method", &self.method())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The methods an OpenAPI item can hold, with its operation for each.
fn operations(item: &mut PathItem) -> [(&'static str, &mut Option<Operation>); 5] {
    [
        ("GET", &mut item.get),
        ("POST", &mut item.post),
        ("PUT", &mut item.put),
        ("PATCH", &mut item.patch),
        ("DELETE", &mut item.delete),
    ]
}

impl Route {
    /// A route of one handler (`utoipa_axum::routes!(handler)`) that `access` may call.
    ///
    /// # Panics
    /// If the handler's `#[utoipa::path]` does not name exactly one method and path (a
    /// programming error, caught by every test that builds the router).
    pub fn new(access: Access, (schemas, paths, handler): UtoipaMethodRouter<AdminState>) -> Self {
        let mut items = paths.paths.into_iter();
        let (Some((path, mut item)), None) = (items.next(), items.next()) else {
            panic!("an admin route is one handler on one path");
        };
        let methods = operations(&mut item)
            .into_iter()
            .filter(|(_, op)| op.is_some())
            .count();
        assert_eq!(methods, 1, "the admin route {path} has one method");
        Self {
            access,
            path,
            item,
            schemas,
            handler,
        }
    }

    /// The route's method (`GET`, `POST`, ...).
    pub fn method(&self) -> &'static str {
        let mut item = self.item.clone();
        operations(&mut item)
            .into_iter()
            .find(|(_, op)| op.is_some())
            .map_or("?", |(m, _)| m)
    }

    /// The route's operation in `item` (the document's item for its path).
    pub fn operation_mut<'a>(&self, item: &'a mut PathItem) -> Option<&'a mut Operation> {
        let method = self.method();
        operations(item)
            .into_iter()
            .find(|(m, _)| *m == method)
            .and_then(|(_, op)| op.as_mut())
    }

    /// The route as OpenAPI paths (one path, one operation).
    pub fn paths(&self) -> Paths {
        let mut paths = Paths::new();
        paths.paths.insert(self.path.clone(), self.item.clone());
        paths
    }

    pub fn schemas(&self) -> &[(String, RefOr<Schema>)] {
        &self.schemas
    }

    /// The handler, to route.
    pub fn handler(&self) -> MethodRouter<AdminState> {
        self.handler.clone()
    }
}

/// Every route of the admin API.
pub fn all() -> Vec<Route> {
    [
        probes::routes(),
        shards::routes(),
        topics::routes(),
        subscriptions::routes(),
        operate::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
