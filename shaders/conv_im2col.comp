#version 450
// im2col of the GPU convolutions (layers/conv_im2col.go): the column matrix
//   col[c][th][tw][p] = x[n][c][i*SH + OH0 + th*DH][j*SW + OW0 + tw*DW]
// (zero where that lies outside the image) over the NP = NB*HO*WO output
// pixels p = (n*HO + i)*WO + j of NB images, which gemm_tiled.comp then
// multiplies by the weights. Workgroup row y is input channel c; one
// invocation per pixel walks the taps, so neighbouring invocations read
// neighbouring input columns and write neighbouring elements of col.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Col { float col[]; };

layout(push_constant) uniform Push {
	uint NP, HO, WO;  // pixels, and the output grid of one image
	uint H, W;        // input rows and columns
	uint TH, TW;      // taps
	uint xoff, coff;  // offsets of x's first image and of col in the bound segments
	uint SXN, SXC;    // x strides of images and channels
	int SH, SW, OH0, OW0, DH, DW;
};

void main() {
	const uint p = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
	if (p >= NP) {
		return;
	}
	const uint c = gl_WorkGroupID.y;
	const uint j = p % WO, r = p / WO;
	const uint i = r % HO, n = r / HO;
	const uint xb = xoff + n * SXN + c * SXC;
	const int ih0 = int(i) * SH + OH0, iw0 = int(j) * SW + OW0;
	const int h = int(H), w = int(W);
	uint at = coff + c * TH * TW * NP + p;
	for (uint th = 0; th < TH; th++) {
		const int ih = ih0 + int(th) * DH;
		const bool rok = ih >= 0 && ih < h;
		for (uint tw = 0; tw < TW; tw++) {
			const int iw = iw0 + int(tw) * DW;
			float v = 0.0;
			if (rok && iw >= 0 && iw < w) {
				v = x[xb + uint(ih) * W + uint(iw)];
			}
			col[at] = v;
			at += NP;
		}
	}
}
