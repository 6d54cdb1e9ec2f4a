// Package runner runs a sync function no more often than a minimum interval,
// at least once per maximum interval, and again soon after a failure.
//
// It plays the role of kube-proxy's BoundedFrequencyRunner: bursts of
// Run() calls coalesce into one run, and tests drive time with a fake clock.
package runner

import (
	"context"
	"fmt"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Runner is a bounded-frequency runner. Create it with New and start Loop in
// a goroutine; then call Run whenever there is work.
type Runner struct {
	name  string
	fn    func() error
	clock clock.Clock

	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration

	kick chan struct{}
}

// Options are the intervals of a Runner.
type Options struct {
	// MinInterval is the least time between the end of one run and the
	// start of the next. Run calls in between are coalesced.
	MinInterval time.Duration
	// MaxInterval is the most time between two runs when nothing calls Run.
	MaxInterval time.Duration
	// RetryInterval is the time until a run that failed is retried.
	RetryInterval time.Duration
	// Clock is the time source; nil means the real clock.
	Clock clock.Clock
}

// New returns a runner for fn. It returns an error when the intervals make
// no sense, so that a bad flag fails at start-up and not later.
func New(name string, fn func() error, opts Options) (*Runner, error) {
	if opts.MinInterval < 0 || opts.MaxInterval <= 0 || opts.RetryInterval <= 0 {
		return nil, fmt.Errorf("%s: intervals must be positive (min %v, max %v, retry %v)", name, opts.MinInterval, opts.MaxInterval, opts.RetryInterval)
	}
	if opts.MaxInterval < opts.MinInterval {
		return nil, fmt.Errorf("%s: max interval %v is shorter than min interval %v; raise --sync-period or lower --min-sync-period", name, opts.MaxInterval, opts.MinInterval)
	}
	c := opts.Clock
	if c == nil {
		c = clock.RealClock{}
	}
	return &Runner{
		name:          name,
		fn:            fn,
		clock:         c,
		minInterval:   opts.MinInterval,
		retryInterval: opts.RetryInterval,
		maxInterval:   opts.MaxInterval,
		kick:          make(chan struct{}, 1),
	}, nil
}

// Run asks for a run as soon as the minimum interval allows. It never
// blocks; calls made while a run is already queued have no extra effect.
func (r *Runner) Run() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Loop runs fn until ctx is done. The first run happens on the first Run
// call or after MaxInterval.
func (r *Runner) Loop(ctx context.Context) {
	next := r.clock.NewTimer(r.maxInterval)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C():
		case <-r.kick:
		}
		// Stop before running so a fake clock shows no waiters while fn
		// runs; tests use that to know where the loop is.
		if !next.Stop() {
			// Drop a tick that fired while we took the kick (fake clocks
			// buffer it), or we would run twice.
			select {
			case <-next.C():
			default:
			}
		}

		wait := r.maxInterval
		if err := r.runOnce(); err != nil {
			wait = min(r.retryInterval, r.maxInterval)
			klog.V(2).InfoS("Run failed; retrying", "runner", r.name, "in", wait, "err", err)
		}
		next.Reset(wait)

		// Hold off for the minimum interval; a Run call made meanwhile
		// stays queued in r.kick and fires right after.
		if r.minInterval > 0 {
			cooldown := r.clock.NewTimer(r.minInterval)
			select {
			case <-ctx.Done():
				cooldown.Stop()
				return
			case <-cooldown.C():
			}
		}
	}
}

func (r *Runner) runOnce() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: panic: %v", r.name, p)
			klog.ErrorS(err, "Run panicked", "runner", r.name)
		}
	}()
	return r.fn()
}
