//! What is wrong with JSON read from a secret or a server, said without a word of it:
//! serde_json's own messages quote the value they stumble on (`invalid type: string "…"`), and
//! that value may be a password, a private key or a token.

/// What is wrong with a secret file's JSON, by its kind alone: never serde_json's message,
/// which quotes the value it stumbled on (`invalid type: string "…"`), and that value may be
/// the secret itself.
pub fn json_problem(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "it could not be read",
        Category::Syntax => "it is not valid JSON (a syntax error)",
        Category::Eof => "it is not valid JSON (it ends in the middle of a value)",
        Category::Data => "a value has the wrong type, or a field is missing",
    }
}

/// Where in a secret file serde_json found a problem (` at line L, column C`), or nothing when
/// it does not say.
pub fn json_position(e: &serde_json::Error) -> String {
    match e.line() {
        0 => String::new(),
        line => format!(" at line {line}, column {}", e.column()),
    }
}

/// The kind of a JSON value (`string`, `object`, ...), never the value.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
