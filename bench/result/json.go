package result

import (
	"encoding/json"
	"fmt"
	"io"
)

// WriteJSON writes the set as indented JSON with SchemaVersion, points and
// metrics in a stable order (the set itself is not reordered).
func WriteJSON(w io.Writer, set *Set) error {
	if err := set.Validate(); err != nil {
		return err
	}
	s := set.sorted()
	s.Schema = SchemaVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding result set %q: %w", set.Label, err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadJSON reads a set written by WriteJSON. It refuses a schema it does not
// know instead of guessing what the fields meant.
func ReadJSON(r io.Reader) (*Set, error) {
	var s Set
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return nil, fmt.Errorf("decoding result set: %w (is it a results.json written by proxymodes?)", err)
	}
	switch s.Schema {
	case SchemaVersion:
	case "":
		return nil, fmt.Errorf("result set has no \"schema\" field: is it a results.json written by proxymodes? (want %q)", SchemaVersion)
	default:
		return nil, fmt.Errorf("result set has schema %q but this proxymodes reads %q: use the proxymodes version that wrote it, or convert the file", s.Schema, SchemaVersion)
	}
	return &s, nil
}
