package loader

import (
	"fmt"
	"math/rand/v2"
)

// View is one view's training transform of an SSL method: a ViewAugment,
// with the horizontal flip moved to the end when FlipLast is set.
// ViewAugment runs the flip right after the crop (folded into the crop's
// resample, RGBImage.ResizedCrop), as VICReg's and SwAV's recipes do;
// SimSiam's (MoCo v2's) flips last, after the blur.
type View struct {
	ViewAugment
	// Plain replaces the augmentation by the evaluation transform at the
	// view's size: the image resized (shorter side to Size) and
	// centre-cropped to Size x Size, as Preprocess{Size, Size} does, the
	// same for every epoch (e2mcvk train --no-augment compares one step
	// with PyTorch this way).
	Plain bool
	// FlipLast runs RandomHorizontalFlip(FlipP) after the blur and the
	// solarization instead of after the crop.
	FlipLast bool
}

// Apply runs the view's transform on m, its random draws taken from rng.
func (v View) Apply(m *RGBImage, rng *rand.Rand) (*RGBImage, error) {
	if v.Plain {
		p := Preprocess{Resize: v.Size, Crop: v.Size}
		if _, _, err := p.OutputSize(m.Width, m.Height); err != nil {
			return nil, err
		}
		return p.rgb(m)
	}
	if !v.FlipLast {
		return v.ViewAugment.Apply(m, rng)
	}
	// ViewAugment cannot move its flip, so it runs with the flip disabled
	// (its zero-probability event still draws one number, which changes
	// the stream but not the distribution) and the flip follows here.
	a := v.ViewAugment
	a.FlipP = 0
	out, err := a.Apply(m, rng)
	if err != nil {
		return nil, err
	}
	if Chance(rng, v.FlipP) {
		out = out.HFlip()
	}
	return out, nil
}

// Check reports a view whose parameters no image could be augmented with,
// so that a pipeline refuses it before decoding anything.
func (v View) Check() error {
	a := v.ViewAugment
	if a.Size <= 0 || int64(a.Size)*int64(a.Size) > MaxImagePixels {
		return fmt.Errorf("view: output size %d must be positive and at most %d pixels", a.Size, MaxImagePixels)
	}
	if !(a.Scale[0] >= 0 && a.Scale[0] <= a.Scale[1] && a.Scale[1] <= 1) {
		return fmt.Errorf("view: crop scale %v must be an ordered range within [0, 1]", a.Scale)
	}
	for _, p := range []float64{a.FlipP, a.JitterP, a.GrayP, a.BlurP, a.SolarizeP} {
		if !(p >= 0 && p <= 1) {
			return fmt.Errorf("view: probability %v outside [0, 1]", p)
		}
	}
	if a.JitterP > 0 {
		if _, err := a.Jitter.Sample(rand.New(rand.NewPCG(0, 0))); err != nil {
			return fmt.Errorf("view: %w", err)
		}
	}
	return nil
}

// Views returns the training views of an SSL method, as its reference
// code builds them:
//
//   - "vicreg": VICReg's TrainTransform (augmentations.py), two 224-pixel
//     views: RandomResizedCrop(224, scale (0.08, 1), BICUBIC), flip 0.5,
//     ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, PIL blur
//     (radius uniform in [0.1, 2.0)) with p 1.0 and 0.1, solarization with
//     p 0 and 0.2.
//   - "simsiam": SimSiam's main_simsiam.py (MoCo v2's augmentation), two
//     identical 224-pixel views: RandomResizedCrop(224, scale (0.2, 1))
//     bilinear, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2,
//     PIL blur (radius uniform in [0.1, 2.0)) with p 0.5, flip 0.5 last.
//   - "swav": SwAV's multi-crop (main_swav.py with its ImageNet settings
//     nmb_crops 2 6, size_crops 224 96, min_scale_crops 0.14 0.05,
//     max_scale_crops 1 0.14): two 224-pixel views of scale (0.14, 1) then
//     six 96-pixel views of scale (0.05, 0.14), each RandomResizedCrop
//     bilinear, flip 0.5, color distortion of strength 1
//     (ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2) and
//     PILRandomGaussianBlur (radius uniform in [0.1, 2.0)) with p 0.5.
//
// Every view is followed by ToTensor and Normalize with the ImageNet
// statistics (RGBImage.Normalize).
func Views(method string) ([]View, error) {
	switch method {
	case "vicreg":
		v := VICRegViews()
		return []View{{ViewAugment: v[0]}, {ViewAugment: v[1]}}, nil
	case "simsiam":
		v := View{
			ViewAugment: ViewAugment{
				Size:    224,
				Scale:   [2]float64{0.2, 1},
				FlipP:   0.5,
				Jitter:  ColorJitter{Brightness: 0.4, Contrast: 0.4, Saturation: 0.4, Hue: 0.1},
				JitterP: 0.8,
				GrayP:   0.2,
				BlurP:   0.5,
			},
			FlipLast: true,
		}
		return []View{v, v}, nil
	case "swav":
		crop := func(size int, scale [2]float64) View {
			return View{ViewAugment: ViewAugment{
				Size:    size,
				Scale:   scale,
				FlipP:   0.5,
				Jitter:  ColorJitter{Brightness: 0.8, Contrast: 0.8, Saturation: 0.8, Hue: 0.2},
				JitterP: 0.8,
				GrayP:   0.2,
				BlurP:   0.5,
			}}
		}
		var vs []View
		for range 2 {
			vs = append(vs, crop(224, [2]float64{0.14, 1}))
		}
		for range 6 {
			vs = append(vs, crop(96, [2]float64{0.05, 0.14}))
		}
		return vs, nil
	}
	return nil, fmt.Errorf("views: unknown method %q (want vicreg, simsiam or swav)", method)
}
