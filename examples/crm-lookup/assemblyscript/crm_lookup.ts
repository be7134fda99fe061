// crm-lookup in AssemblyScript: given {"customer_id":"42"}, look the customer up in the
// internal CRM through the worker's "crm" endpoint and return
// {"customer_id","name","tier","open_tickets"}. The same task as ../main.go (Go), ../rust and
// ../c, with the same outputs and failure messages. Build with ./build.sh.
import * as castellan from "../../../sdk/assemblyscript/assembly/index";

// MAX_ID_DIGITS keeps absurd inputs out of the CRM's logs.
const MAX_ID_DIGITS = 18;

export function run(): i32 {
  return castellan.handle(lookup);
}

function lookup(): string | null {
  const input = castellan.inputString();
  if (input.length == 0) return "castellan: decoding job input: the input is empty, want a JSON value";
  const got = castellan.jsonGetString(input, "customer_id");
  const id = got !== null ? got : "";
  const bad = validateID(id);
  if (bad !== null) return bad;

  const res = castellan.get("crm", "/api/customers/" + id);
  if (res.error !== null) return "looking up customer " + id + " in the crm: " + res.error!.toString();
  const resp = res.response!;
  if (resp.status == 404) {
    resp.close();
    return "customer " + id + " not found";
  }
  if (resp.status != 200) {
    resp.close();
    return "looking up customer " + id + ": the crm answered HTTP " + resp.status.toString();
  }
  const body = resp.text();
  if (body === null) return "looking up customer " + id + ": " + resp.err!.toString();
  const rid = castellan.jsonGetString(body, "customer_id");
  const recID = rid !== null ? rid : "";
  if (recID != id) return "looking up customer " + id + ": the crm returned customer \"" + recID + "\"";
  const n = castellan.jsonGetString(body, "name");
  const t = castellan.jsonGetString(body, "tier");
  const name = n !== null ? n : "";
  const tier = t !== null ? t : "";
  const tickets = castellan.jsonGetInt(body, "open_tickets");
  castellan.log(castellan.INFO, "customer " + id + ": tier " + tier + ", " + tickets.toString() + " open tickets");
  castellan.output(
    "{\"customer_id\":" + castellan.jsonString(recID) +
    ",\"name\":" + castellan.jsonString(name) +
    ",\"tier\":" + castellan.jsonString(tier) +
    ",\"open_tickets\":" + tickets.toString() + "}");
  return null;
}

function validateID(id: string): string | null {
  if (id.length == 0) return "input field \"customer_id\" is missing or empty; want digits, e.g. {\"customer_id\":\"42\"}";
  const bytes = String.UTF8.byteLength(id);
  if (bytes > MAX_ID_DIGITS) {
    return "input field \"customer_id\" has " + bytes.toString() + " characters; want at most " + MAX_ID_DIGITS.toString() + " digits";
  }
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    if (c < 0x30 || c > 0x39) {
      const pos = String.UTF8.byteLength(id.substring(0, i));
      return "input field \"customer_id\" has " + quoteRune(id, i) + " at position " + pos.toString() + "; want digits only, e.g. \"42\"";
    }
  }
  return null;
}

// quoteRune formats the character at id[i] as Go's %q formats a rune, e.g. '.' or '\n'.
function quoteRune(id: string, i: i32): string {
  const c = id.charCodeAt(i);
  if (c == 0x07) return "'\\a'";
  if (c == 0x08) return "'\\b'";
  if (c == 0x0c) return "'\\f'";
  if (c == 0x0a) return "'\\n'";
  if (c == 0x0d) return "'\\r'";
  if (c == 0x09) return "'\\t'";
  if (c == 0x0b) return "'\\v'";
  if (c == 0x27) return "'\\''";
  if (c == 0x5c) return "'\\\\'";
  if (c < 0x20 || c == 0x7f) {
    let hex = c.toString(16);
    if (hex.length < 2) hex = "0" + hex;
    return "'\\x" + hex + "'";
  }
  return "'" + String.fromCodePoint(id.codePointAt(i)) + "'";
}
