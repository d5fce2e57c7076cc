package loader

// HFlip returns m mirrored left to right: torchvision's hflip, PIL's
// transpose(FLIP_LEFT_RIGHT).
func (m *RGBImage) HFlip() *RGBImage {
	out := newRGBImage(m.Width, m.Height)
	w := m.Width
	for y := 0; y < m.Height; y++ {
		in := m.Pix[3*w*y : 3*w*(y+1)]
		o := out.Pix[3*w*y : 3*w*(y+1)]
		for x := 0; x < w; x++ {
			copy(o[3*(w-1-x):3*(w-x)], in[3*x:3*x+3])
		}
	}
	return out
}
