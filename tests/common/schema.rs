//! `kafka-agent status --json` against tests/status.schema.json: a small JSON Schema checker
//! (the keywords the schema uses), shared by the tests that run `status`.

use serde_json::Value;

pub fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/status.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Errors of `v` against `schema` (type, enum, const, required, properties, items, minimum,
/// maximum, pattern, $ref into $defs). Every property `v` has must be described: the schema
/// is the documentation.
pub fn validate(schema: &Value, v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, schema, v, "$", &mut errors);
    errors
}

fn check(root: &Value, s: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let mut fail = |m: String| errors.push(format!("{at}: {m}"));
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("only #/$defs/ refs");
        return check(root, &root["$defs"][name], v, at, errors);
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type in schema at {at}"),
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => panic!("unknown type {other} in schema"),
        });
        if !ok {
            fail(format!("{v} is not of type {types:?}"));
            return;
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        fail(format!("{v} is not one of {options:?}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        fail(format!("{v} is not {c}"));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            fail(format!("{n} < {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            fail(format!("{n} > {max}"));
        }
    }
    if let (Some(p), Some(text)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        let ok = match p {
            "^[0-9a-f]{64}$" => {
                text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            }
            "^[a-z][a-z0-9_]*$" => {
                text.starts_with(|c: char| c.is_ascii_lowercase())
                    && text
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
            }
            "^0x[0-9a-f]+$" => text.strip_prefix("0x").is_some_and(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            }),
            "^[0-9a-f]+$" => {
                !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            }
            "^server\\.[0-9]+=" => text
                .strip_prefix("server.")
                .and_then(|t| t.split_once('='))
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            other => panic!("the checker does not know pattern {other}"),
        };
        if !ok {
            fail(format!("{text:?} does not match {p}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                errors.push(format!("{at}: required {r} is missing"));
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, val, &format!("{at}.{k}"), errors),
                None => errors.push(format!("{at}: {k} is not in the schema")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}
