package result

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The files of a result set directory.
const (
	BenchFile   = "bench.txt"    // Go benchmark lines, for benchstat and proxymodes report OLD NEW
	JSONFile    = "results.json" // the source of truth; everything else can be rendered from it
	SummaryFile = "README.md"    // the Markdown summary with the plots embedded
)

// Dir returns the directory of a result set under root (normally
// "results"): root/<YYYY-MM-DD>-<label>, the date in date's location. The
// label is reduced to letters, digits, '.', '_' and '-'; empty means
// "default".
func Dir(root string, date time.Time, label string) string {
	l := slug(label)
	if strings.Trim(l, "-.") == "" {
		l = "default"
	}
	return filepath.Join(root, date.Format("2006-01-02")+"-"+l)
}

// WriteAll writes a complete result set into dir: bench.txt, results.json,
// the plots and README.md.
func WriteAll(dir string, set *Set) error {
	if err := set.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var js, bench bytes.Buffer
	if err := WriteJSON(&js, set); err != nil {
		return err
	}
	if err := WriteBench(&bench, set); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, JSONFile), js.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, BenchFile), bench.Bytes(), 0o644); err != nil {
		return err
	}
	_, err := Render(dir, set)
	return err
}

// Render writes the files that are derived for people, the plots and
// README.md, into dir and returns their paths. It leaves bench.txt and
// results.json alone, so a result set can be rendered again after the
// summary or the plots change (proxymodes report DIR).
func Render(dir string, set *Set) ([]string, error) {
	files, err := Plot(dir, set)
	if err != nil {
		return files, err
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, set, names...); err != nil {
		return files, err
	}
	readme := filepath.Join(dir, SummaryFile)
	if err := os.WriteFile(readme, md.Bytes(), 0o644); err != nil {
		return files, err
	}
	return append(files, readme), nil
}

// Load reads the results.json of the result set in dir.
func Load(dir string) (*Set, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: give a result set directory, results/<YYYY-MM-DD>-<label>", dir)
	}
	name := filepath.Join(dir, JSONFile)
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no %s: is it a result set? (it should hold %s and %s)", dir, JSONFile, BenchFile, JSONFile)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := ReadJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return s, nil
}
