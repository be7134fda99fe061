package redact

import (
	"bytes"
	"encoding/binary"
	"slices"
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

// first reports the position of the leftmost occurrence in text, or -1.
func (m *matcher) first(text []byte) int {
	if m == nil || len(text) < m.minLen {
		return -1
	}
	start, _, _ := m.find(text, 0, len(text)-m.minLen)
	return start
}

// scan redacts the decided prefix of text, appending the result to dst.
//
// carry is how many leading bytes of text belong to an occurrence whose placeholder was
// already written (an overlapping run still open at the end of the previous chunk). When
// final is false the text may continue, so only positions whose every possible form fits
// in text are decided; the undecided tail, text[consumed:], is shorter than maxLen and must
// be passed again, with more bytes appended, together with the returned carry.
func (m *matcher) scan(dst, text []byte, carry int, final bool) (out []byte, consumed, carryOut int) {
	if m == nil {
		return append(dst, text[carry:]...), len(text), 0
	}
	limit := len(text) - m.maxLen
	if final {
		limit = len(text) - m.minLen
	}
	pos, runEnd := 0, carry // text[:pos] is done; text[pos:runEnd] is covered, placeholder written
	p := 0
	for {
		start, length, next := -1, 0, p
		if p <= limit {
			start, length, next = m.find(text, p, limit)
		}
		if start < 0 {
			if final {
				next = len(text)
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
