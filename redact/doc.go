// Package redact scrubs credential values out of byte streams.
//
// Every stream that can carry a credential back towards a task or an operator (HTTP
// responses handed to a guest, the guest's output, its stderr, the worker's log) goes
// through a [Set]. A secret is rarely echoed byte for byte: upstream systems reflect it
// base64-encoded inside a Basic auth header, URL-escaped in a redirect, hex-dumped in a
// debug page or escaped inside a JSON string, and sometimes one of these inside another.
// The set replaces every occurrence of every form of a secret with [Placeholder].
//
// Which forms. The forms come from a table of the encoders real software applies to a
// value it reflects, and every composition of two of them:
//
//   - percent-encoding and JSON string escaping are undone before searching. Both leave
//     their encoder a free choice per character (which characters to escape, the case of
//     hex digits, "\/" or "/"), so their forms cannot be listed; but a valid escaping
//     decodes to what was escaped whatever was chosen. The text is decoded into views
//     with one layer and with two layers undone (percent in percent, JSON in JSON, and
//     each in the other), each mapped back to the bytes it came from, and the views are
//     searched for the secret and for its base64 and hex forms.
//   - base64 (standard and URL alphabets, padded or not, and at each of the three byte
//     alignments inside a longer value) and hex (either case) mix every bit of their
//     input into their output, so they are listed as literal forms ([Forms]): of the
//     secret, of its percent-encodings and JSON escapings as libraries write them, and of
//     its own base64 and hex forms.
//
// docs/threat-model.md ("Redaction") lists what is out of reach.
//
// Matching rules. Occurrences are found leftmost-longest; occurrences that overlap are
// merged into a single placeholder, so no byte of any occurrence survives (plain
// leftmost-longest replacement would leave the tail of a second, overlapping occurrence in
// clear). Adjacent, non-overlapping occurrences each get their own placeholder. An
// occurrence found in a view covers the whole escapes it was decoded from.
//
// Why secrets shorter than [MinSecretLen] are refused: an eight-byte floor keeps the
// redactor from eating ordinary words and numbers, and keeps the matcher fast (it skips
// through text in strides close to the shortest form's length; see matcher.go).
//
// Streaming. [Set.NewReader] and [Set.NewWriter] give exactly the bytes [Set.Redact] gives
// on the whole input, whatever the chunking, while holding back a bounded tail: when no
// escape is near the end of what has arrived, only the bytes that could still begin a
// literal form; otherwise enough for the longest escaped occurrence (a secret JSON-escaped
// twice takes up to 36 bytes per byte). Streams keep a little of what they already passed
// on, so that a chunk boundary never cuts an escape, or a run of backslashes, in two. A
// secret added while a stream is open is caught from the next chunk on; an occurrence
// already straddling the held-back boundary at that moment may be missed, so add secrets
// before streaming (the secrets store preloads them at worker start).
package redact
