//! The OpenAPI 3.1 document of the HTTP API, built from the functions' route
//! tables: each route is documented where it is declared (`Routes::doc`),
//! and its request and response bodies are the JSON Schemas (schemars) of
//! the types its handler parses and returns, so the document follows the code.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Makes a body's schema (a `$ref` into the document's components, for named types).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (as its handler deserializes it; responses match it too).
pub fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A declared route, `(method, path, doc)`; `None`: undocumented, which a test refuses.
pub type DocumentedRoute = (String, String, Option<RouteDoc>);

/// One route's documentation.
#[derive(Clone, Debug)]
pub struct RouteDoc {
    pub summary: &'static str,
    pub query: Vec<Param>,
    pub body: Option<SchemaFn>,
    pub replies: Vec<Reply>,
    /// Served without credentials.
    pub public: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub schema: SchemaFn,
}

impl RouteDoc {
    pub fn new(summary: &'static str) -> Self {
        Self { summary, query: Vec::new(), body: None, replies: Vec::new(), public: false }
    }

    /// A JSON request body of this schema.
    pub fn body(mut self, schema: SchemaFn) -> Self {
        self.body = Some(schema);
        self
    }

    /// An optional query parameter.
    pub fn query(mut self, name: &'static str, description: &'static str) -> Self {
        self.query.push(Param { name, description });
        self
    }

    /// A JSON answer with this status.
    pub fn json(self, status: u16, schema: SchemaFn) -> Self {
        self.reply(status, "application/json", schema)
    }

    pub fn reply(mut self, status: u16, content_type: &'static str, schema: SchemaFn) -> Self {
        self.replies.push(Reply { status, content_type, schema });
        self
    }

    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }
}

/// Any JSON object (for answers assembled at run time; their fields are in the summary's docs).
pub fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

/// Text (pages, scripts, JSON Lines, server-sent events).
pub fn text(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string"})
}

/// Server-sent events: each event's data is a JSON object.
pub fn events(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

/// Every error: `{"error": {"code", "message", "request_id"}}`.
fn error_schema() -> Value {
    json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"}}}}})
}

fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<String> = path.split('/').filter(|w| !w.is_empty() && *w != "v1").map(|w| w.trim_matches(|c| c == '{' || c == '}').replace(['-', '.'], "_")).collect();
    format!("{}_{}", method.to_lowercase(), words.join("_"))
}

/// The document of `routes` (`(method, path, doc)`; undocumented routes are left out).
pub fn document(version: &str, routes: &[DocumentedRoute]) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into());
    let mut generator = settings.into_generator();
    let mut paths = Map::new();
    for (method, path, doc) in routes {
        let Some(doc) = doc else { continue };
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|w| w.strip_prefix('{').and_then(|w| w.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}))
            .collect();
        parameters.extend(doc.query.iter().map(|p| json!({"name": p.name, "in": "query", "required": false, "description": p.description, "schema": {"type": "string"}})));
        let mut responses = Map::new();
        for reply in &doc.replies {
            let schema = (reply.schema)(&mut generator);
            let entry = responses.entry(reply.status.to_string()).or_insert_with(|| json!({"description": doc.summary, "content": {}}));
            entry["content"][reply.content_type] = json!({"schema": schema});
        }
        responses.insert("default".into(), json!({"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        let mut operation = json!({"summary": doc.summary, "operationId": operation_id(method, path), "parameters": parameters, "responses": responses});
        if let Some(body) = doc.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body(&mut generator)}}});
        }
        if doc.public {
            operation["security"] = json!([]);
        }
        let item = paths.entry(path.clone()).or_insert_with(|| json!({}));
        item[method.to_lowercase()] = operation;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Keel", "version": version,
            "description": "Keel's HTTP API: grounded answers, a model gateway, governed actions and a hash-chained decision log, per tenant."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
            "description": "An API key (keel_<tenant>_…) or a JWT of the platform or the tenant's identity provider"}}},
        "security": [{"bearer": []}],
    })
}
