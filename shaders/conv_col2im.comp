#version 450
// col2im of the GPU convolutions' backward pass for the input
// (layers/conv_im2col.go), the adjoint of conv_im2col.comp:
//   dx[n][c][ih][iw] = sum over taps (th, tw) and output pixels (i, j) with
//       i*SH + OH0 + th*DH == ih and j*SW + OW0 + tw*DW == iw
//   of dcol[c][th][tw][(n*HO + i)*WO + j],
// dcol being the weights' transpose times the output gradient (a GEMM).
// Workgroup row y is channel c; one invocation per input pixel gathers its
// taps in order (no atomics: the sum is deterministic).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Col { float dcol[]; };
layout(binding = 1) writeonly buffer DX { float dx[]; };

layout(push_constant) uniform Push {
	uint NPIN, H, W;  // input pixels NB*H*W, and the input grid of one image
	uint HO, WO, NP;  // output grid of one image, output pixels NB*HO*WO
	uint TH, TW;      // taps
	uint coff, dxoff; // offsets of dcol and of dx's first image in the bound segments
	uint SXN, SXC;    // dx strides of images and channels
	int SH, SW, OH0, OW0, DH, DW;
};

void main() {
	const uint q = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
	if (q >= NPIN) {
		return;
	}
	const uint c = gl_WorkGroupID.y;
	const uint iw = q % W, r = q / W;
	const uint ih = r % H, n = r / H;
	const uint base = coff + c * TH * TW * NP + n * HO * WO;
	const int ho = int(HO), wo = int(WO);
	float sum = 0.0;
	for (uint th = 0; th < TH; th++) {
		const int a = int(ih) - OH0 - int(th) * DH;
		if (a < 0 || a % SH != 0 || a / SH >= ho) {
			continue;
		}
		const uint row = base + (th * TW) * NP + uint(a / SH) * WO;
		for (uint tw = 0; tw < TW; tw++) {
			const int b = int(iw) - OW0 - int(tw) * DW;
			if (b < 0 || b % SW != 0 || b / SW >= wo) {
				continue;
			}
			sum += dcol[row + tw * NP + uint(b / SW)];
		}
	}
	dx[dxoff + n * SXN + c * SXC + ih * W + iw] = sum;
}
