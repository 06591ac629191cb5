package config

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decoder walks a YAML node tree into the raw config structs by their
// `yaml` tags. It exists instead of yaml.Decoder.KnownFields because the
// errors must name the file, the line and the full key path
// ("routes[1].timeouts.idle"), and because validation after decoding needs
// to find the line of any key again (lines).
type decoder struct {
	file  string
	lines map[string]int // key path → line, for errors found after decoding
	errs  []error
}

// Error is one problem in a config file, located by line and key.
type Error struct {
	File string
	Line int    // 0 when the key is missing entirely
	Key  string // dotted path such as routes[0].upstream; "" for the document
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (d *decoder) fail(line int, key, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// joined returns every recorded problem as one error, in line order so
// that `relay46 check` reads like the file; problems with no line (a key
// missing from the whole file) come first.
func (d *decoder) joined() error {
	line := func(err error) int {
		if e, ok := err.(*Error); ok {
			return e.Line
		}
		return 0
	}
	slices.SortStableFunc(d.errs, func(a, b error) int { return cmp.Compare(line(a), line(b)) })
	return errors.Join(d.errs...)
}

// errAt records an error for a key path known to the decoder; the line is
// looked up from what the decoder saw.
func (d *decoder) errAt(key, format string, args ...any) {
	d.fail(d.lines[key], key, format, args...)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decode fills v (a pointer to struct, slice, map or scalar) from n.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	// Errors about an alias's value belong where the alias is used, not at
	// the anchor it points to.
	orig, line := n, n.Line
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if path != "" {
		if _, seen := d.lines[path]; !seen {
			d.lines[path] = line
		}
	}
	// Types with their own syntax (durations, sizes) parse themselves.
	if v.CanAddr() {
		if u, ok := v.Addr().Interface().(scalarParser); ok {
			if n.Kind != yaml.ScalarNode {
				d.fail(line, path, "expected a single value, got %s", kindName(n))
				return
			}
			if err := u.parseScalar(n.Value); err != nil {
				d.fail(line, path, "%v", err)
			}
			return
		}
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Tag == "!!null" {
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(orig, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, line, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(line, path, "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(line, path, "expected a single value, got %s", kindName(n))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(line, path, "%s", typeErr(n, v.Type(), err))
		}
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, line int, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		if n.Tag == "!!null" {
			return
		}
		d.fail(line, path, "expected a mapping of keys, got %s", kindName(n))
		return
	}
	fields := map[string]int{}
	var names []string
	t := v.Type()
	for i := range t.NumField() {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = i
		names = append(names, tag)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := join(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.fail(k.Line, key, "duplicate key (first set on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			d.fail(k.Line, key, "unknown key %q (%s)", k.Value, suggest(k.Value, names))
			continue
		}
		d.lines[key] = k.Line
		d.decode(val, v.Field(idx), key)
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func typeErr(n *yaml.Node, t reflect.Type, err error) string {
	want := t.Kind().String()
	switch t.Kind() {
	case reflect.Bool:
		want = "true or false"
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
		want = "a whole number"
	case reflect.String:
		want = "a string"
	}
	var te *yaml.TypeError
	if errors.As(err, &te) || err != nil {
		return fmt.Sprintf("expected %s, got %q", want, n.Value)
	}
	return err.Error()
}

// scalarParser is implemented by config types written as one string.
type scalarParser interface {
	parseScalar(s string) error
}

// suggest names the known key closest to a misspelt one, or lists the
// keys allowed here when none is close.
func suggest(bad string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(bad, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return "keys allowed here: " + strings.Join(known, ", ")
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
