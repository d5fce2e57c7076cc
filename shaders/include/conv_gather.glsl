// The push constants of the gather convolutions (conv_gather.comp for CPU
// devices, conv_gather_tiled.comp for GPUs), which compute one piece of
//   out[n][m][i][j] = sum over taps (th, tw) and channels c of
//                     in[n][c][ih][iw] * wt[c][th][tw][m]  (+ bias[m])
//   with ih = i*SH + OH0 + th*DTH, iw = j*SW + OW0 + tw*DTW,
// where positions outside the input (the padding) read as zero. The forward
// convolution is this with in = x, m = output channels, c = input channels
// and the taps the kernel's (kh, kw); the backward pass for the input is it
// with in = the output gradient, m = input channels, c = output channels and
// one output grid per stride phase, whose taps are the kernel positions that
// reach that phase. On CPU devices the weight gradient is it too, with the
// images summed as channels and the output pixels as taps (layers/conv.go
// sets the constants up).
//
// Coordinates n, m, c, i, j are relative to the piece; ih and iw are absolute
// rows and columns of the input. Offsets are relative to the bound buffer
// segments; inoff may wrap around 2^32 (the piece's input starts at row
// ROWLO, not at row 0), which unsigned arithmetic undoes.
#ifndef E2MCVK_CONV_GATHER_GLSL
#define E2MCVK_CONV_GATHER_GLSL

layout(push_constant) uniform Push {
	uint NPIX;  // output pixels of the piece: images * RI * WJ
	uint RI;    // output rows of the piece
	uint WJ;    // output columns
	uint M;     // output channels of the piece
	uint C;     // reduction channels of the piece
	uint WSC;   // wt stride of c (a multiple of 4)
	uint inoff, woff, outoff, boff;
	uint SINN, SINC; // input strides of n and c
	uint WIN;        // input width (and row stride)
	int ROWLO, ROWHI; // input rows the piece may read; ROWLO > ROWHI: none
	uint SOUTN, SOUTC, SOUTI, SOUTJ; // output strides of n, m, i, j
	uint SH, SW;      // input rows / columns per output row / column
	int OH0, OW0;     // input position of pixel (0, 0) at tap (0, 0)
	int DTH, DTW;     // input rows / columns per tap
	uint TH, TW;      // taps
	uint WSH, WSW;    // wt strides of th and tw (multiples of 4)
	uint FLAGS;       // bit 0: add to out; bit 1: add bias
	// woff addresses wt channel m - SHIFT: the piece's first output channel
	// need not start a quad, the weights the CPU kernel reads as vec4 do.
	uint SHIFT;
	uint tilesM;      // workgroups along the pixels
};

#endif
