package api

import (
	"strconv"

	"google.golang.org/protobuf/proto"
)

// maxPageItems bounds the entries of one page of the lists paged by
// offset (artifacts, test reports, repositories).
const maxPageItems = 1000

// page returns the page of items that starts at the offset page_token
// names ("" is 0): at most maxPageItems entries and MaxListResponseBytes
// of encoding, but at least one. next is the token of the following page,
// "" at the end. The lists it serves are in a stable order; an entry
// added between two pages may be skipped or shown twice, never the
// message limit exceeded.
func page[T proto.Message](items []T, token, what string) (out []T, next string, err error) {
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 {
			return nil, "", invalid("page_token: %.40q is not a token %s returned", token, what)
		}
		start = min(n, len(items))
	}
	size, end := 0, start
	for end < len(items) && end-start < maxPageItems {
		// The entry, its field tag and length prefix.
		n := proto.Size(items[end]) + 8
		if end > start && size+n > MaxListResponseBytes {
			break
		}
		size += n
		end++
	}
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}
