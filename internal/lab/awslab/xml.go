package awslab

import (
	"encoding/xml"
	"io"
	"strconv"
	"strings"
	"time"
)

// node is an XML element built for a response: a name and either text or
// children.
type node struct {
	name string
	text string
	kids []*node
	leaf bool
}

// el builds an element. Each of kids may be a string (the element's text),
// a *node, a []*node, an int, int64 or bool (text), or nil (skipped).
func el(name string, kids ...any) *node {
	n := &node{name: name}
	for _, k := range kids {
		switch v := k.(type) {
		case nil:
		case string:
			n.text, n.leaf = v, true
		case *node:
			if v != nil {
				n.kids = append(n.kids, v)
			}
		case []*node:
			for _, c := range v {
				if c != nil {
					n.kids = append(n.kids, c)
				}
			}
		case int:
			n.text, n.leaf = strconv.Itoa(v), true
		case int64:
			n.text, n.leaf = strconv.FormatInt(v, 10), true
		case bool:
			n.text, n.leaf = strconv.FormatBool(v), true
		default:
			panic("awslab: el: unsupported child type")
		}
	}
	return n
}

// opt is an element with text, or nothing when the text is empty.
func opt(name, text string) *node {
	if text == "" {
		return nil
	}
	return el(name, text)
}

// set is EC2's list shape: <name><item>...</item>...</name>. Items are
// renamed "item".
func set(name string, items []*node) *node {
	n := &node{name: name}
	for _, it := range items {
		if it == nil {
			continue
		}
		it.name = "item"
		n.kids = append(n.kids, it)
	}
	return n
}

// tagSet is EC2's tagSet of a resource, nil when it has no tags.
func tagSet(tags map[string]string) *node {
	if len(tags) == 0 {
		return nil
	}
	var items []*node
	for _, k := range sortedKeys(tags) {
		items = append(items, el("item", el("key", k), el("value", tags[k])))
	}
	return set("tagSet", items)
}

// ec2Time formats a time as EC2 does: ISO 8601 with milliseconds, UTC.
func ec2Time(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// write writes n and its subtree.
func (n *node) write(w *strings.Builder) {
	w.WriteByte('<')
	w.WriteString(n.name)
	w.WriteByte('>')
	if n.leaf {
		xml.EscapeText(escWriter{w}, []byte(n.text))
	}
	for _, k := range n.kids {
		k.write(w)
	}
	w.WriteString("</")
	w.WriteString(n.name)
	w.WriteByte('>')
}

type escWriter struct{ b *strings.Builder }

func (e escWriter) Write(p []byte) (int, error) { return e.b.Write(p) }

// document renders a root element with an xmlns attribute.
func document(root, xmlns string, kids []*node) string {
	var b strings.Builder
	b.WriteString(xml.Header)
	b.WriteByte('<')
	b.WriteString(root)
	if xmlns != "" {
		b.WriteString(` xmlns="`)
		b.WriteString(xmlns)
		b.WriteByte('"')
	}
	b.WriteByte('>')
	for _, k := range kids {
		if k != nil {
			k.write(&b)
		}
	}
	b.WriteString("</")
	b.WriteString(root)
	b.WriteByte('>')
	return b.String()
}

var _ io.Writer = escWriter{}
