package result

import (
	"fmt"
	"math"
	"strings"
)

// missing stands in a table for a value that was not measured.
const missing = "–"

// formatValue renders v for people, by its unit: times in s/ms/µs, bytes
// in KiB/MiB/GiB, counts as integers.
func formatValue(unit string, v float64) string {
	switch {
	case strings.HasSuffix(unit, "-sec") || unit == "sec":
		return formatSeconds(v)
	case strings.HasSuffix(unit, "-B") || unit == "B":
		return formatBytes(v)
	case strings.HasSuffix(unit, "/s"):
		if math.Abs(v) >= 100 {
			return fmt.Sprintf("%.0f", v)
		}
		return sig3(v)
	}
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%.0f", v)
	}
	return sig3(v)
}

func formatSeconds(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0 s"
	case a >= 1:
		return sig3(v) + " s"
	case a >= 1e-3:
		return sig3(v*1e3) + " ms"
	case a >= 1e-6:
		return sig3(v*1e6) + " µs"
	}
	return sig3(v*1e9) + " ns"
}

func formatBytes(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1<<30:
		return sig3(v/(1<<30)) + " GiB"
	case a >= 1<<20:
		return sig3(v/(1<<20)) + " MiB"
	case a >= 1<<10:
		return sig3(v/(1<<10)) + " KiB"
	}
	return fmt.Sprintf("%.0f B", v)
}

func formatRatio(r float64) string {
	return sig3(r) + "×"
}

// sig3 prints about three significant digits without switching to an
// exponent.
func sig3(x float64) string {
	a := math.Abs(x)
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	case a >= 0.01 || a == 0:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.2g", x)
}
