package junit

import (
	"bytes"
	"fmt"
	"io"
	"unicode/utf8"
)

// DefaultMaxRunBytes is the head and the tail kept of one run of
// character data (Options.MaxRunBytes).
const DefaultMaxRunBytes = 64 << 10

// boundedReader sits between the file and the XML decoder and cuts every
// long run of character data — the text between two tags, or one CDATA
// section — to its first head and last tail bytes with an omission marker
// between them. encoding/xml returns a whole run as one token, so without
// it a 400 MB <system-out> would cost the decoder at least 400 MB (and
// more as its buffer grows). Memory is O(head + tail) per run, whatever
// the input. Tags, comments, processing instructions and declarations
// pass through unchanged; a cut never splits a UTF-8 sequence or an
// entity reference, and the marker contains no markup.
//
// Line numbers of the decoder count the newlines it sees; each cut
// records the newlines it dropped so realLine can map them back.
type boundedReader struct {
	r          io.Reader
	head, tail int

	in     []byte // read from r, not yet scanned
	inOff  int
	out    []byte // scanned, ready for the decoder
	outOff int
	err    error // from r, returned once in and out are drained

	state int
	// markup recognition: the bytes of the current markup seen so far
	// (only its first 9 bytes matter) and, in a tag, the open quote.
	mark  []byte
	quote byte
	depth int // '[' nesting in a <!DOCTYPE ...>
	// the current run (text or CDATA body)
	runHead     []byte
	runTail     []byte // ring of the last tail bytes once head is full
	tailStart   int    // index of the oldest byte in runTail when full
	tailFull    bool
	omitted     int64 // bytes evicted from the ring (the gap)
	omittedNL   int64
	cdataEnd    int // how much of "]]>" was just seen in a CDATA body
	outLines    int64
	cuts        []lineCut
	commentDash int // trailing '-' seen in a comment
	piQ         bool
}

// lineCut records that the marker emitted on decoder line at+1 stands
// for omitted newlines.
type lineCut struct{ at, omitted int64 }

const (
	bText = iota
	bMarkup
	bTag
	bComment
	bCDATA
	bPI
	bDecl
)

func newBoundedReader(r io.Reader, head, tail int) *boundedReader {
	return &boundedReader{r: r, head: head, tail: tail, in: make([]byte, 32<<10)[:0]}
}

// realLine maps a line number of the decoder back to the input's.
func (b *boundedReader) realLine(line int) int {
	n := int64(line)
	for _, c := range b.cuts {
		if c.at+1 <= int64(line) {
			n += c.omitted
		}
	}
	return int(n)
}

func (b *boundedReader) Read(p []byte) (int, error) {
	for b.outOff == len(b.out) {
		b.out, b.outOff = b.out[:0], 0
		if b.inOff == len(b.in) {
			if b.err != nil {
				b.flushRun()
				if len(b.out) > 0 {
					break
				}
				return 0, b.err
			}
			n, err := b.r.Read(b.in[:cap(b.in)])
			b.in, b.inOff, b.err = b.in[:n], 0, err
			if n == 0 && err == nil {
				return 0, nil
			}
			continue
		}
		b.scan()
	}
	n := copy(p, b.out[b.outOff:])
	b.outOff += n
	return n, nil
}

// emit queues bytes for the decoder, counting newlines.
func (b *boundedReader) emit(p []byte) {
	b.outLines += int64(bytes.Count(p, []byte{'\n'}))
	b.out = append(b.out, p...)
}

func (b *boundedReader) emitByte(c byte) {
	if c == '\n' {
		b.outLines++
	}
	b.out = append(b.out, c)
}

// scan consumes the unscanned input.
func (b *boundedReader) scan() {
	for b.inOff < len(b.in) {
		c := b.in[b.inOff]
		b.inOff++
		switch b.state {
		case bText:
			if c != '<' {
				// Fast path: the text up to the next tag in one go.
				end := bytes.IndexByte(b.in[b.inOff:], '<')
				if end < 0 {
					end = len(b.in) - b.inOff
				}
				b.runBytes(b.in[b.inOff-1 : b.inOff+end])
				b.inOff += end
				continue
			}
			if c == '<' {
				b.flushRun()
				b.state, b.mark = bMarkup, append(b.mark[:0], c)
				b.emitByte(c)
				continue
			}
			b.runByte(c)
		case bCDATA:
			if c != ']' && b.cdataEnd == 0 {
				// Fast path: the body up to the next ']' in one go.
				end := bytes.IndexByte(b.in[b.inOff:], ']')
				if end < 0 {
					end = len(b.in) - b.inOff
				}
				b.runBytes(b.in[b.inOff-1 : b.inOff+end])
				b.inOff += end
				continue
			}
			b.cdataByte(c)
		case bMarkup:
			b.emitByte(c)
			b.mark = append(b.mark, c)
			switch {
			case bytes.Equal(b.mark, []byte("<![CDATA[")):
				b.state = bCDATA
			case bytes.Equal(b.mark, []byte("<!--")):
				b.state, b.commentDash = bComment, 0
			case len(b.mark) == 2 && c == '?':
				b.state, b.piQ = bPI, false
			case len(b.mark) >= 2 && b.mark[1] == '!' && (bytes.HasPrefix([]byte("<![CDATA["), b.mark) || bytes.HasPrefix([]byte("<!--"), b.mark)):
				// still might become CDATA or a comment
			case len(b.mark) >= 2 && b.mark[1] == '!':
				b.state, b.depth = bDecl, 0
				b.declByte(c)
			default:
				b.state, b.quote = bTag, 0
				b.tagByte(c)
			}
		case bTag:
			b.emitByte(c)
			b.tagByte(c)
		case bComment:
			b.emitByte(c)
			switch {
			case c == '>' && b.commentDash >= 2:
				b.state = bText
			case c == '-':
				b.commentDash++
			default:
				b.commentDash = 0
			}
		case bPI:
			b.emitByte(c)
			if c == '>' && b.piQ {
				b.state = bText
			}
			b.piQ = c == '?'
		case bDecl:
			b.emitByte(c)
			b.declByte(c)
		}
	}
}

func (b *boundedReader) tagByte(c byte) {
	switch {
	case b.quote != 0:
		if c == b.quote {
			b.quote = 0
		}
	case c == '"' || c == '\'':
		b.quote = c
	case c == '>':
		b.state = bText
	}
}

func (b *boundedReader) declByte(c byte) {
	switch c {
	case '[':
		b.depth++
	case ']':
		b.depth--
	case '>':
		if b.depth <= 0 {
			b.state = bText
		}
	}
}

// cdataByte takes one byte of a CDATA body; "]]>" ends it.
func (b *boundedReader) cdataByte(c byte) {
	switch {
	case c == ']':
		b.cdataEnd++
		if b.cdataEnd > 2 {
			// "]]]": the first ']' is body.
			b.runByte(']')
			b.cdataEnd = 2
		}
	case c == '>' && b.cdataEnd == 2:
		b.cdataEnd = 0
		b.flushRun()
		b.emit([]byte("]]>"))
		b.state = bText
	default:
		for ; b.cdataEnd > 0; b.cdataEnd-- {
			b.runByte(']')
		}
		b.runByte(c)
	}
}

// runBytes adds p to the current run (runByte for many bytes, with
// copies instead of a loop).
func (b *boundedReader) runBytes(p []byte) {
	n := min(b.head-len(b.runHead), len(p))
	b.runHead = append(b.runHead, p[:n]...)
	p = p[n:]
	if b.tail == 0 {
		b.omitted += int64(len(p))
		b.omittedNL += int64(bytes.Count(p, []byte{'\n'}))
		return
	}
	if !b.tailFull {
		n := min(b.tail-len(b.runTail), len(p))
		b.runTail = append(b.runTail, p[:n]...)
		p = p[n:]
		b.tailFull = len(b.runTail) == b.tail
	}
	if len(p) > b.tail {
		// The whole ring and the start of p are evicted.
		gone := p[:len(p)-b.tail]
		b.omitted += int64(len(gone) + b.tail)
		b.omittedNL += int64(bytes.Count(gone, []byte{'\n'}) + bytes.Count(b.runTail, []byte{'\n'}))
		copy(b.runTail, p[len(p)-b.tail:])
		b.tailStart = 0
		return
	}
	for len(p) > 0 {
		// Overwrite the oldest bytes, up to the end of the ring.
		k := min(len(p), b.tail-b.tailStart)
		old := b.runTail[b.tailStart : b.tailStart+k]
		b.omitted += int64(k)
		b.omittedNL += int64(bytes.Count(old, []byte{'\n'}))
		copy(old, p[:k])
		p = p[k:]
		b.tailStart = (b.tailStart + k) % b.tail
	}
}

// runByte adds one byte to the current run: to its head until full, then
// to the ring of its tail.
func (b *boundedReader) runByte(c byte) {
	if len(b.runHead) < b.head {
		b.runHead = append(b.runHead, c)
		return
	}
	if !b.tailFull {
		b.runTail = append(b.runTail, c)
		b.tailFull = len(b.runTail) == b.tail
		return
	}
	if b.tail == 0 {
		b.evict(c)
		return
	}
	b.evict(b.runTail[b.tailStart])
	b.runTail[b.tailStart] = c
	b.tailStart = (b.tailStart + 1) % b.tail
}

func (b *boundedReader) evict(c byte) {
	b.omitted++
	if c == '\n' {
		b.omittedNL++
	}
}

// flushRun emits the current run: whole when nothing was evicted, else
// head, marker, tail, cut on UTF-8 and entity boundaries.
func (b *boundedReader) flushRun() {
	if len(b.runHead) == 0 && len(b.runTail) == 0 {
		return
	}
	tail := b.runTail
	if b.tailFull && b.tailStart > 0 {
		tail = append(append([]byte{}, b.runTail[b.tailStart:]...), b.runTail[:b.tailStart]...)
	}
	if b.omitted == 0 {
		b.emit(b.runHead)
		b.emit(tail)
	} else {
		head, tail := b.runHead, tail
		// Never end the head inside a UTF-8 sequence or an entity.
		cut := len(head)
		for cut > 0 && cut > len(head)-utf8.UTFMax && !utf8.RuneStart(head[cut-1]) {
			cut--
		}
		if cut > 0 && !utf8.FullRune(head[cut-1:]) {
			cut--
		}
		if amp := bytes.LastIndexByte(head[:cut], '&'); amp >= 0 && bytes.IndexByte(head[amp:cut], ';') < 0 {
			cut = amp
		}
		extra := int64(len(head) - cut)
		extraNL := int64(bytes.Count(head[cut:], []byte{'\n'}))
		head = head[:cut]
		// Never start the tail inside a UTF-8 sequence or an entity.
		start := 0
		for start < len(tail) && start < utf8.UTFMax && !utf8.RuneStart(tail[start]) {
			start++
		}
		if semi := bytes.IndexByte(tail[start:min(len(tail), start+32)], ';'); semi >= 0 && bytes.IndexByte(tail[start:start+semi], '&') < 0 {
			start += semi + 1
		}
		extra += int64(start)
		extraNL += int64(bytes.Count(tail[:start], []byte{'\n'}))
		tail = tail[start:]
		b.emit(head)
		b.cuts = append(b.cuts, lineCut{at: b.outLines, omitted: b.omittedNL + extraNL})
		b.emit(fmt.Appendf(nil, "…(%d bytes omitted)…", b.omitted+extra))
		b.emit(tail)
	}
	b.runHead, b.runTail = b.runHead[:0], b.runTail[:0]
	b.tailStart, b.tailFull, b.omitted, b.omittedNL = 0, false, 0, 0
}
