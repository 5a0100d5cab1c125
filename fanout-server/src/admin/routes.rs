//! Every admin route, declared once: its handler, whose `#[utoipa::path]` gives the method,
//! the path and the OpenAPI operation, and the role it requires. The router, the OpenAPI
//! document and the route tests are all built from these entries: adding an endpoint is
//! one entry in its file's `routes()` plus its handler.

use axum::routing::MethodRouter;
use utoipa::openapi::path::{PathItem, Paths};
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
    /// Its method (`GET`, `POST`, ...).
    pub method: &'static str,
    /// The path, in axum's and OpenAPI's syntax alike (`/v1/topics/{topic}`).
    pub path: String,
    /// The OpenAPI item holding the route's one operation, its role on it.
    item: PathItem,
    /// The schemas its operation refers to.
    schemas: Vec<(String, RefOr<Schema>)>,
    /// The handler, for the route's method.
    pub handler: MethodRouter<AdminState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("access", &self.access)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A route of one handler (`utoipa_axum::routes!(handler)`) that `access` may call. Its
    /// operation says so (`x-fanout-role`).
    ///
    /// # Panics
    /// If the handler's `#[utoipa::path]` does not name exactly one method and path (a
    /// programming error, caught by every test that builds the router).
    pub fn new(access: Access, (schemas, paths, handler): UtoipaMethodRouter<AdminState>) -> Self {
        let mut items = paths.paths.into_iter();
        let (Some((path, mut item)), None) = (items.next(), items.next()) else {
            panic!("an admin route is one handler on one path");
        };
        let method = {
            let mut operations = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PUT", &mut item.put),
                ("PATCH", &mut item.patch),
                ("DELETE", &mut item.delete),
            ]
            .into_iter()
            .filter_map(|(method, op)| Some((method, op.as_mut()?)));
            let (Some((method, operation)), None) = (operations.next(), operations.next()) else {
                panic!("the admin route {path} has one method");
            };
            operation
                .extensions
                .get_or_insert_default()
                .insert(ROLE_EXTENSION.to_owned(), access.as_str().into());
            method
        };
        Self {
            access,
            method,
            path,
            item,
            schemas,
            handler,
        }
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
