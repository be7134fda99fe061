//! crm-lookup in Rust: given {"customer_id":"42"}, look the customer up in the internal CRM
//! through the worker's "crm" endpoint and return {"customer_id","name","tier","open_tickets"}.
//! The same task as ../main.go (Go), ../c and ../assemblyscript, with the same outputs and
//! failure messages. Build with ./build.sh.

use castellan::json::{ObjectWriter, Value};
use castellan::Level;

/// Keeps absurd inputs out of the CRM's logs.
const MAX_ID_DIGITS: usize = 18;

#[no_mangle]
pub extern "C" fn run() -> i32 {
    castellan::handle(lookup)
}

fn lookup() -> Result<(), String> {
    let input = castellan::input();
    if input.is_empty() {
        return Err("castellan: decoding job input: the input is empty, want a JSON value".to_string());
    }
    let input = castellan::json::parse(&input).map_err(|e| format!("castellan: decoding job input: {}", e))?;
    let id = input.get("customer_id").and_then(Value::as_str).unwrap_or("");
    validate_id(id)?;

    let path = format!("/api/customers/{}", id);
    let resp = castellan::endpoint("crm")
        .get(&path)
        .map_err(|e| format!("looking up customer {} in the crm: {}", id, e))?;
    match resp.status {
        200 => {}
        404 => return Err(format!("customer {} not found", id)),
        s => return Err(format!("looking up customer {}: the crm answered HTTP {}", id, s)),
    }
    let rec = resp.json().map_err(|e| format!("looking up customer {}: {}", id, e))?;
    let got = rec.get("customer_id").and_then(Value::as_str).unwrap_or("");
    if got != id {
        return Err(format!("looking up customer {}: the crm returned customer {:?}", id, got));
    }
    let name = rec.get("name").and_then(Value::as_str).unwrap_or("");
    let tier = rec.get("tier").and_then(Value::as_str).unwrap_or("");
    let tickets = rec.get("open_tickets").and_then(Value::as_i64).unwrap_or(0);
    castellan::log(Level::Info, &format!("customer {}: tier {}, {} open tickets", id, tier, tickets));
    let out = ObjectWriter::new()
        .string("customer_id", got)
        .string("name", name)
        .string("tier", tier)
        .int("open_tickets", tickets)
        .finish();
    castellan::output(out.as_bytes());
    Ok(())
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(r#"input field "customer_id" is missing or empty; want digits, e.g. {"customer_id":"42"}"#.to_string());
    }
    if id.len() > MAX_ID_DIGITS {
        return Err(format!(
            r#"input field "customer_id" has {} characters; want at most {} digits"#,
            id.len(),
            MAX_ID_DIGITS
        ));
    }
    for (i, c) in id.char_indices() {
        if !c.is_ascii_digit() {
            return Err(format!(
                r#"input field "customer_id" has {} at position {}; want digits only, e.g. "42""#,
                quote_rune(c),
                i
            ));
        }
    }
    Ok(())
}

/// Formats c as Go's %q formats a rune, e.g. '.' or '\n'.
fn quote_rune(c: char) -> String {
    match c {
        '\u{7}' => "'\\a'".to_string(),
        '\u{8}' => "'\\b'".to_string(),
        '\u{c}' => "'\\f'".to_string(),
        '\n' => "'\\n'".to_string(),
        '\r' => "'\\r'".to_string(),
        '\t' => "'\\t'".to_string(),
        '\u{b}' => "'\\v'".to_string(),
        '\'' => "'\\''".to_string(),
        '\\' => "'\\\\'".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("'\\x{:02x}'", c as u32),
        c => format!("'{}'", c),
    }
}
