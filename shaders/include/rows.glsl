// Row statistics of the row-wise kernels (softmax_fwd.comp, loss_ce.comp),
// which take a matrix of rows of k elements: a workgroup of WG invocations
// covers TX = WG / TY rows with TY invocations per row. Invocation ty of a row
// handles its columns ty, ty + TY, ...: neighbouring invocations read
// neighbouring addresses of a long row, and a short row (TY = 1) is left to
// one invocation. The partial results of a row are combined pairwise in
// shared memory, as reduce.comp does.
//
// The including kernel declares, before including this file: the
// specialization constants WG and TY, const uint TX = WG / TY,
// `shared float part[WG]`, a buffer array x[] holding the rows and a push
// constant k (the row length).
#ifndef E2MCVK_ROWS_GLSL
#define E2MCVK_ROWS_GLSL

#include "erf.glsl"

// Combines the TY values v of each row of the workgroup by sum or by max;
// every invocation of the row gets the result. Every invocation of the
// workgroup must call it (it holds barriers).
float rows_combine_(float v, uint tx, uint ty, bool take_max) {
	if (TY == 1) {
		return v;
	}
	uint at = ty * TX + tx;
	part[at] = v;
	barrier();
	for (uint h = TY / 2; h > 0; h /= 2) {
		if (ty < h) {
			float o = part[at + h * TX];
			part[at] = take_max ? max(part[at], o) : part[at] + o;
		}
		barrier();
	}
	float r = part[tx];
	barrier(); // part is reused by the next combine
	return r;
}

// row_stats returns the maximum m of the row starting at x[base] and the sum
// s of exp(x - m) over it (so 1 <= s <= k): the log-sum-exp is m + log(s),
// computed without overflow. The sum is Kahan-compensated, so it holds a few
// ulp whatever k. Rows that are not live (past the last row) take part in the
// barriers only.
void row_stats(bool live, uint base, uint tx, uint ty, out float m, out float s) {
	float mx = uintBitsToFloat(0xff800000u); // -inf
	if (live) {
		for (uint c = ty; c < k; c += TY) {
			mx = max(mx, x[base + c]);
		}
	}
	m = rows_combine_(mx, tx, ty, true);
	precise float sum = 0.0;
	precise float comp = 0.0;
	if (live) {
		for (uint c = ty; c < k; c += TY) {
			precise float t1 = e2_exp(x[base + c] - m) - comp;
			precise float t2 = sum + t1;
			comp = (t2 - sum) - t1;
			sum = t2;
		}
	}
	s = rows_combine_(sum - comp, tx, ty, false);
}

#endif
