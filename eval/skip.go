package eval

import (
	"context"
	"fmt"
	"image"
	"io"
	"slices"
	"strings"

	"github.com/e2mcvk/e2mcvk/loader"
)

// Skip is an image an evaluation stream could not read and passed over.
type Skip struct {
	// Index is the image's index in its data set.
	Index int `json:"index"`
	// Name is the data set's name for it: its path for a file.
	Name string `json:"name"`
	// Err says why it could not be read, naming the image (a string, so
	// that the feature cache keeps it).
	Err string `json:"error"`
}

// Skips is a run's account of the images its evaluation streams could not
// read (missing, truncated or corrupt files), as loader.Pipeline keeps it
// for training: by default each is logged with the error naming it and
// passed over; with Strict the first one is an error. One Skips serves all
// the streams of a run (training and evaluation sets, every seed and
// epoch), so that an image met again is logged and counted once.
//
// A nil *Skips is strict and silent. A Skips is not safe for concurrent
// use: the streams call it from the goroutine that consumes their batches.
type Skips struct {
	// Strict makes an unreadable image an error instead of a skip.
	Strict bool
	// Log receives one line for each skipped image and for each labels
	// subset that loses samples to one; nil discards them.
	Log io.Writer

	seen map[string]bool
	list []Skip
}

// Count returns the number of distinct images skipped so far.
func (s *Skips) Count() int {
	if s == nil {
		return 0
	}
	return len(s.list)
}

// List returns the images skipped so far, each once, in the order met (a
// copy).
func (s *Skips) List() []Skip {
	if s == nil {
		return nil
	}
	return slices.Clone(s.list)
}

// add accounts for unreadable images: with Strict (or s nil) the first is
// an error naming it, otherwise each not met before is logged and counted.
func (s *Skips) add(skipped ...Skip) error {
	for _, sk := range skipped {
		if s == nil || s.Strict {
			return fmt.Errorf("unreadable image (strict: not skipped): %s", sk.Err)
		}
		if s.seen[sk.Name] {
			continue
		}
		if s.seen == nil {
			s.seen = map[string]bool{}
		}
		s.seen[sk.Name] = true
		s.list = append(s.list, sk)
		if s.Log != nil {
			fmt.Fprintf(s.Log, "skipped unreadable image: %s\n", sk.Err)
		}
	}
	return nil
}

// Dropped accounts for the samples of a selection (a labels subset: what
// names it) that have no row because their images were skipped (the
// Skipped of Features.Select's result): it logs how many were dropped and
// which, and counts any image not met before. With Strict it is an error,
// though a strict stream never skips.
func (s *Skips) Dropped(what string, dropped []Skip) error {
	if len(dropped) == 0 {
		return nil
	}
	if err := s.add(dropped...); err != nil {
		return err
	}
	if s.Log != nil {
		names := make([]string, len(dropped))
		for i, d := range dropped {
			names[i] = d.Name
		}
		fmt.Fprintf(s.Log, "%s: dropped %d sample(s) whose images were skipped as unreadable: %s\n", what, len(dropped), strings.Join(names, ", "))
	}
	return nil
}

// readImage decodes image i of ds, or returns why it cannot be read: a
// decoding error or an empty image (what loader.Pipeline skips). The
// reason names the image.
func readImage(ds loader.Dataset, i int) (image.Image, *Skip) {
	img, err := ds.Image(i)
	if err == nil {
		if b := img.Bounds(); b.Dx() <= 0 || b.Dy() <= 0 {
			err = fmt.Errorf("empty %dx%d image", b.Dx(), b.Dy())
		}
	}
	if err == nil {
		return img, nil
	}
	name := ds.Name(i)
	msg := err.Error()
	// Errors of images read from files (loader.DecodeImage) name the path
	// already; others get the image's name.
	if !strings.Contains(msg, name) {
		msg = name + ": " + msg
	}
	return nil, &Skip{Index: i, Name: name, Err: msg}
}

// unreadable returns the images of idx that cannot be read, in idx order,
// decoding them on one goroutine a CPU.
func unreadable(ctx context.Context, ds loader.Dataset, idx []int) ([]Skip, error) {
	bad := make([]*Skip, len(idx))
	if err := parallelFor(ctx, len(idx), func(k int) { _, bad[k] = readImage(ds, idx[k]) }); err != nil {
		return nil, err
	}
	var out []Skip
	for _, b := range bad {
		if b != nil {
			out = append(out, *b)
		}
	}
	return out, nil
}

// loadBatch is loader.LoadBatch (the evaluation transform pre) passing over
// unreadable images: it returns the readable images of idx as one [len(kept),
// 3, h, w] tensor, their data-set indices kept (in idx order), and the
// unreadable ones. It errs on anything else, such as images that preprocess
// to different sizes. A batch that loads costs nothing extra; one that
// fails is decoded once more to find its unreadable images (LoadBatch
// reports only its first error), then loaded without them.
func loadBatch(ctx context.Context, ds loader.Dataset, idx []int, pre loader.Preprocess) (data []float32, kept []int, h, w int, skipped []Skip, err error) {
	data, h, w, err = loader.LoadBatch(ctx, ds, idx, pre, 0)
	if err == nil {
		return data, idx, h, w, nil, nil
	}
	if ctx.Err() != nil {
		return nil, nil, 0, 0, nil, ctx.Err()
	}
	skipped, perr := unreadable(ctx, ds, idx)
	if perr != nil {
		return nil, nil, 0, 0, nil, perr
	}
	if len(skipped) == 0 {
		return nil, nil, 0, 0, nil, err
	}
	kept = make([]int, 0, len(idx)-len(skipped))
	for _, i := range idx {
		if !slices.ContainsFunc(skipped, func(s Skip) bool { return s.Index == i }) {
			kept = append(kept, i)
		}
	}
	if len(kept) == 0 {
		return nil, nil, 0, 0, skipped, nil
	}
	data, h, w, err = loader.LoadBatch(ctx, ds, kept, pre, 0)
	if err != nil {
		return nil, nil, 0, 0, nil, err
	}
	return data, kept, h, w, skipped, nil
}
