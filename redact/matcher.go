package redact

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"
)

// matcher is an immutable multi-pattern searcher, rebuilt by Set.Add and shared by all
// readers without locking.
//
// It is a Wu–Manber search: the window is the first minLen bytes a form could occupy, and
// the last blockLen bytes of the window are hashed into a shift table that says how far
// the window can slide before any form could line up with them. With forms at least 8
// bytes long and a few hundred of them, almost every 4-byte block is unknown and the window
// jumps by minLen−3 bytes per table look-up, which is why a 1 MiB response with no match
// costs a fraction of a millisecond instead of one bytes.Index pass per form.
type matcher struct {
	forms  [][]byte
	minLen int
	maxLen int
	// shift[h] is how far the window may slide when its last block hashes to h; 0 means a
	// form's window may end here, and cands[h] lists those forms, longest first.
	shift [1 << hashBits]uint8
	cands map[uint16][]int32
}

const (
	blockLen = 4
	hashBits = 16
	maxShift = 255 // shift entries are bytes; the window is capped to keep them so
)

func hashBlock(b []byte) uint16 {
	return uint16((binary.LittleEndian.Uint32(b) * 0x9E3779B1) >> (32 - hashBits))
}

// newMatcher builds a matcher for forms, each at least MinSecretLen (>= blockLen) bytes.
// It returns nil when there is nothing to find.
func newMatcher(forms [][]byte) *matcher {
	if len(forms) == 0 {
		return nil
	}
	m := &matcher{forms: forms, minLen: len(forms[0]), cands: make(map[uint16][]int32)}
	for _, f := range forms {
		m.minLen = min(m.minLen, len(f))
		m.maxLen = max(m.maxLen, len(f))
	}
	m.minLen = min(m.minLen, maxShift+blockLen-1)
	def := uint8(m.minLen - blockLen + 1)
	for i := range m.shift {
		m.shift[i] = def
	}
	for i, f := range forms {
		w := f[:m.minLen]
		for j := 0; j+blockLen <= m.minLen; j++ {
			h := hashBlock(w[j:])
			m.shift[h] = min(m.shift[h], uint8(m.minLen-blockLen-j))
		}
		h := hashBlock(w[m.minLen-blockLen:])
		m.cands[h] = append(m.cands[h], int32(i))
	}
	for _, c := range m.cands {
		slices.SortFunc(c, func(a, b int32) int { return len(forms[b]) - len(forms[a]) })
	}
	return m
}

// find returns the leftmost-longest occurrence starting at a position in [from, limit],
// as (start, length, 0). With no such occurrence it returns (-1, 0, next), where next >
// limit is the first position not yet known to start no occurrence. The caller must
// ensure limit+minLen <= len(text); forms longer than what is left of text never match.
func (m *matcher) find(text []byte, from, limit int) (start, length, next int) {
	p := from
	for p <= limit {
		h := hashBlock(text[p+m.minLen-blockLen:])
		if s := m.shift[h]; s != 0 {
			p += int(s)
			continue
		}
		for _, i := range m.cands[h] {
			f := m.forms[i]
			if len(f) <= len(text)-p && bytes.Equal(text[p:p+len(f)], f) {
				return p, len(f), 0
			}
		}
		p++
	}
	return -1, 0, p
}

// firstPartial returns the first position p >= from at which a form longer than the rest
// of text starts with that rest, or len(text)-minLen+1 if there is none up to there.
// Positions after that are shorter than any form and wait in any case.
func (m *matcher) firstPartial(text []byte, from int) int {
	limit := len(text) - m.minLen
	p := max(from, 0)
	for p <= limit {
		h := hashBlock(text[p+m.minLen-blockLen:])
		if s := m.shift[h]; s != 0 {
			p += int(s)
			continue
		}
		for _, i := range m.cands[h] {
			if f, rest := m.forms[i], text[p:]; len(f) > len(rest) && bytes.HasPrefix(f, rest) {
				return p
			}
		}
		p++
	}
	return limit + 1
}

// first reports the position of the leftmost occurrence in text, or -1.
func (m *matcher) first(text []byte) int {
	if m == nil || len(text) < m.minLen {
		return -1
	}
	start, _, _ := m.find(text, 0, len(text)-m.minLen)
	return start
}

// searcher finds every form of every secret: the literal forms in the text as it is (raw),
// and the forms that survive escaping in views of the text with one or two layers of
// percent-encoding and JSON string escaping undone (one, two). Like matcher it is
// immutable and shared.
type searcher struct {
	raw, one, two *matcher
	// oneP and twoP are one and two for views in which percent-encoding was undone: there
	// a space and '+' are the same byte (see plusSpace).
	oneP, twoP *matcher
	plusSpace  bool // some form has a space: views where percent-encoding was undone need plusSpace
	minLen     int
	// maxExt bounds the extent in the text of any occurrence: a decoded byte comes from at
	// most `expansion` bytes per layer, and an occurrence may start or end inside an escape.
	maxExt int
	// maxLen is how much a stream holds back: maxExt, plus what a decoder reads past the
	// end of an occurrence to know how the escapes before it end.
	maxLen int
}

func newSearcher(raw, one, two [][]byte) *searcher {
	s := &searcher{raw: newMatcher(raw), one: newMatcher(one), two: newMatcher(two)}
	if s.raw == nil {
		return nil
	}
	s.oneP, s.twoP = s.one, s.two
	if canon := plusSpaceForms(one); canon != nil {
		s.oneP = newMatcher(canon)
	}
	if canon := plusSpaceForms(two); canon != nil {
		s.twoP = newMatcher(canon)
	}
	s.plusSpace = s.oneP != s.one || s.twoP != s.two
	s.minLen = s.raw.minLen
	s.maxExt = s.raw.maxLen
	if s.one != nil {
		s.maxExt = max(s.maxExt, expansion*s.one.maxLen+maxEscape)
	}
	if s.two != nil {
		s.maxExt = max(s.maxExt, expansion*expansion*s.two.maxLen+syncWindow)
	}
	s.maxLen = s.maxExt + syncWindow
	return s
}

// occ is an occurrence text[s:e].
type occ struct{ s, e int }

// scratch holds the buffers of the views, reused across calls by one stream.
type scratch struct {
	v1, v2 view
	occs   []occ
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// eachView calls fn with every view of text with one or two layers of escaping undone in
// which something was decoded (a layer that decodes nothing gives a view already seen),
// saying whether percent-encoding was undone in it and whether it has two layers. fn may
// rewrite the view's bytes in place; a second layer is decoded from what it leaves.
func eachView(text []byte, sc *scratch, fn func(v *view, pct, two bool)) {
	pct, js := hasEscapes(text)
	for _, first := range []struct {
		on, pct bool
		l       layer
		trigger byte
	}{{pct, true, percentLayer, '%'}, {js, false, jsonLayer, '\\'}} {
		if !first.on || !decode(first.l, first.trigger, text, nil, &sc.v1) {
			continue
		}
		fn(&sc.v1, first.pct, false)
		if bytes.IndexByte(sc.v1.b, '%') >= 0 && decode(percentLayer, '%', sc.v1.b, &sc.v1, &sc.v2) {
			fn(&sc.v2, true, true)
		}
		if bytes.IndexByte(sc.v1.b, '\\') >= 0 && decode(jsonLayer, '\\', sc.v1.b, &sc.v1, &sc.v2) {
			fn(&sc.v2, first.pct, true)
		}
	}
}

// viewOccs returns the occurrences found in the decoded views of text that start in
// [from, limit], sorted by start, longest first among equal starts. Occurrences that
// decoding does not create are found by the raw matcher too; they may be listed as well.
func (s *searcher) viewOccs(text []byte, from, limit int, sc *scratch) []occ {
	sc.occs = sc.occs[:0]
	if limit < from || s.one == nil {
		return sc.occs
	}
	eachView(text, sc, func(v *view, pct, two bool) {
		m := s.one
		switch {
		case pct && two:
			m = s.twoP
		case pct:
			m = s.oneP
		case two:
			m = s.two
		}
		if pct && s.plusSpace {
			plusSpace(v.b)
		}
		for p := 0; p+m.minLen <= len(v.b); {
			start, length, _ := m.find(v.b, p, len(v.b)-m.minLen)
			if start < 0 {
				break
			}
			if rs, re := v.extent(start, start+length); rs >= from && rs <= limit {
				sc.occs = append(sc.occs, occ{rs, re})
			}
			p = start + 1
		}
	})
	slices.SortFunc(sc.occs, func(a, b occ) int {
		if a.s != b.s {
			return a.s - b.s
		}
		return b.e - a.e
	})
	return sc.occs
}

// first reports the position of the leftmost occurrence in text, or -1.
func (s *searcher) first(text []byte) int {
	if s == nil || len(text) < s.minLen {
		return -1
	}
	limit := len(text) - s.minLen
	start, _, _ := s.raw.find(text, 0, limit)
	pct, js := hasEscapes(text)
	if !pct && !js {
		return start
	}
	if start >= 0 {
		limit = start
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	if occs := s.viewOccs(text, 0, limit, sc); len(occs) > 0 && (start < 0 || occs[0].s < start) {
		start = occs[0].s
	}
	return start
}

// scan redacts the decided part of text, appending the result to dst.
//
// text[:ctx] was already written: it is there only so that the escapes just after it are
// decoded as they were in the whole stream (see syncBefore). carry is how many bytes after
// it belong to an occurrence whose placeholder was already written (an overlapping run
// still open at the end of the previous chunk). When final is false the text may continue,
// so only positions whose every possible occurrence fits in text are decided; the undecided
// tail, text[consumed:], is shorter than maxLen and must be passed again, with more bytes
// appended, together with the returned carry.
func (s *searcher) scan(dst, text []byte, ctx, carry int, final bool, sc *scratch) (out []byte, consumed, carryOut int) {
	if s == nil {
		return append(dst, text[ctx+carry:]...), len(text), 0
	}
	limit := len(text) - s.maxLen
	if final {
		limit = len(text) - s.minLen
	} else if tail := text[max(ctx, len(text)-s.maxLen):]; !s.plusSpace && bytes.IndexByte(tail, '%') < 0 && bytes.IndexByte(tail, '\\') < 0 {
		// No escape near the end: an occurrence that may run past the end has no escape
		// there either, so the text it has so far is the start of a literal form. Only
		// positions where such a start is seen need to wait; this keeps what a stream holds
		// back short for ordinary text, however long the escaped forms are.
		limit = s.raw.firstPartial(text, max(ctx, len(text)-s.raw.maxLen+1)) - 1
	}
	views := s.viewOccs(text, ctx, limit, sc)
	vi := 0
	pos, runEnd := ctx, ctx+carry // text[:pos] is done; text[pos:runEnd] is covered, placeholder written
	p := ctx
	for {
		for vi < len(views) && views[vi].s < p {
			vi++
		}
		lim := limit
		if vi < len(views) {
			lim = min(lim, views[vi].s)
		}
		start, length, next := -1, 0, p
		if p <= lim {
			start, length, next = s.raw.find(text, p, lim)
		}
		if vi < len(views) {
			if v := views[vi]; start < 0 || v.s < start || v.s == start && v.e-v.s > length {
				start, length = v.s, v.e-v.s
			}
		}
		if start < 0 {
			if final {
				next = len(text)
			} else {
				// The raw matcher may know that positions past limit start no literal
				// form, but the views were searched only up to limit.
				next = min(next, max(limit+1, p))
			}
			if runEnd > pos && next < runEnd {
				// The run may still be extended by an occurrence starting in [next, runEnd).
				return dst, next, runEnd - next
			}
			pos = max(pos, runEnd)
			if next > pos {
				dst = append(dst, text[pos:next]...)
				pos = next
			}
			return dst, pos, 0
		}
		if start < runEnd {
			runEnd = max(runEnd, start+length) // overlaps the open run: merge
		} else {
			pos = max(pos, runEnd)
			dst = append(dst, text[pos:start]...)
			dst = append(dst, Placeholder...)
			pos, runEnd = start, start+length
		}
		p = start + 1
	}
}

// occurrences returns every occurrence in text, as Redact sees it (for tests and for the
// reference redactor they compare against).
func (s *searcher) occurrences(text []byte) []occ {
	if s == nil || len(text) < s.minLen {
		return nil
	}
	limit := len(text) - s.minLen
	var out []occ
	for p := 0; p <= limit; {
		start, length, _ := s.raw.find(text, p, limit)
		if start < 0 {
			break
		}
		out = append(out, occ{start, start + length})
		p = start + 1
	}
	var sc scratch
	out = append(out, s.viewOccs(text, 0, limit, &sc)...)
	slices.SortFunc(out, func(a, b occ) int {
		if a.s != b.s {
			return a.s - b.s
		}
		return b.e - a.e
	})
	return out
}

// plusSpace rewrites every space in a view where percent-encoding was undone as '+'. A
// query string or form body writes a space as '+', a path as %20, and an escaping nested in
// the other can mix both in one value: with one byte for both, every mix matches. A
// value's own '+' reads the same after decoding whether it was escaped or not.
func plusSpace(b []byte) {
	for i := bytes.IndexByte(b, ' '); i >= 0; {
		b[i] = '+'
		j := bytes.IndexByte(b[i+1:], ' ')
		if j < 0 {
			break
		}
		i += 1 + j
	}
}

// plusSpaceForms returns forms with spaces written as '+', deduplicated and sorted, or nil
// when no form has a space.
func plusSpaceForms(forms [][]byte) [][]byte {
	if !slices.ContainsFunc(forms, func(f []byte) bool { return bytes.IndexByte(f, ' ') >= 0 }) {
		return nil
	}
	seen := make(map[string]bool, len(forms))
	var out [][]byte
	for _, f := range forms {
		c := bytes.ReplaceAll(f, []byte(" "), []byte("+"))
		if !seen[string(c)] {
			seen[string(c)] = true
			out = append(out, c)
		}
	}
	slices.SortFunc(out, bytes.Compare)
	return out
}
