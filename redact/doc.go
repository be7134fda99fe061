// Package redact scrubs credential values out of byte streams.
//
// Every stream that can carry a credential back towards a task or an operator (HTTP
// responses handed to a guest, the guest's output, its stderr, the worker's log) goes
// through a [Set]. A secret is rarely echoed byte for byte: upstream systems reflect it
// base64-encoded inside a Basic auth header, URL-escaped in a redirect, hex-dumped in a
// debug page or escaped inside a JSON string. [Forms] lists the encodings we look for, and
// the set replaces every occurrence of any of them with [Placeholder].
//
// Matching rules. Occurrences are found leftmost-longest; occurrences that overlap are
// merged into a single placeholder, so no byte of any occurrence survives (plain
// leftmost-longest replacement would leave the tail of a second, overlapping occurrence in
// clear). Adjacent, non-overlapping occurrences each get their own placeholder.
//
// Why secrets shorter than [MinSecretLen] are refused: an eight-byte floor keeps the
// redactor from eating ordinary words and numbers, and keeps the matcher fast (it skips
// through text in strides close to the shortest form's length; see matcher.go).
//
// Streaming. [Set.NewReader] and [Set.NewWriter] give exactly the bytes [Set.Redact] gives
// on the whole input, whatever the chunking, while holding back at most (longest form − 1)
// bytes. A secret added while a stream is open is caught from the next chunk on; an
// occurrence already straddling the held-back boundary at that moment may be missed, so add
// secrets before streaming (the secrets store preloads them at worker start).
package redact
