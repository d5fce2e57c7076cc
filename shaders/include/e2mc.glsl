// Shared by the E2MC column kernels (e2mc_column.comp for columns that fit
// shared memory, e2mc_load / e2mc_sort_block / e2mc_sort_step /
// e2mc_spacing for longer ones).
//
// An including kernel declares before the #include:
//   const uint WG (invocations, a power of two), const uint NMAX,
//   shared uvec2 kv[NMAX] (x: the key's float bits, y: its row; one 64-bit
//   access per element halves lavapipe's per-lane memory loops);
//   and, for column_spacings, const uint BOUND and macros SORTED_KEY(i) and
//   SORTED_ROW(i). Keys are the unbounded values: the bounds are increasing,
//   and bound_diff measures spacings from them (see bound.glsl).
#ifndef E2MCVK_E2MC_GLSL
#define E2MCVK_E2MC_GLSL

#include "bound.glsl"

// wg_sum sums one value per invocation over the workgroup, using the row
// halves kv[].y as scratch (callers must not need them across the call);
// every invocation gets the total.
float wg_sum(float v) {
	uint t = gl_LocalInvocationID.x;
	barrier();
	kv[t].y = floatBitsToUint(v);
	barrier();
	for (uint s = WG / 2u; s > 0u; s >>= 1u) {
		if (t < s) {
			kv[t].y = floatBitsToUint(uintBitsToFloat(kv[t].y) + uintBitsToFloat(kv[t + s].y));
		}
		barrier();
	}
	float total = uintBitsToFloat(kv[0].y);
	barrier();
	return total;
}

// before reports whether element a sorts before element b: by value, ties by
// row, which is the order of a stable sort.
bool before(uvec2 a, uvec2 b) {
	float ka = uintBitsToFloat(a.x), kb = uintBitsToFloat(b.x);
	return ka < kb || (ka == kb && a.y < b.y);
}

// bitonic_shared runs the bitonic stages k in [kLo, kHi] (powers of two), and
// in each the steps j from min(k/2, jTop) down to 1, over the len elements of
// shared memory. base is the index of kv[0] in the whole column, which sets
// each pair's direction, so blocks of a longer column sort consistently.
void bitonic_shared(uint base, uint len, uint kLo, uint kHi, uint jTop) {
	uint t = gl_LocalInvocationID.x;
	for (uint k = kLo; k <= kHi; k <<= 1u) {
		for (uint j = min(k >> 1u, jTop); j > 0u; j >>= 1u) {
			for (uint p = t; p < len / 2u; p += WG) {
				// The p-th pair: a has bit j clear, b = a + j.
				uint a = ((p & ~(j - 1u)) << 1u) | (p & (j - 1u));
				uint b = a + j;
				bool up = ((base + a) & k) == 0u;
				uvec2 ea = kv[a], eb = kv[b];
				if (before(eb, ea) == up) {
					kv[a] = eb;
					kv[b] = ea;
				}
			}
			barrier();
		}
	}
}

#ifdef SORTED_KEY
// column_spacings returns this invocation's share of the sum of
// log(scale * (x(i+m) - x(i)) + eps) over the sorted column and, with grad,
// writes the gradient of the column's entropy (times gcoef) for each row:
// sorted position k ends spacing k-m and starts spacing k.
float column_spacings(uint n, uint m, float scale, float eps, bool grad, float gcoef, uint gBase, uint stride) {
	uint t = gl_LocalInvocationID.x;
	if (grad) {
		for (uint k = t; k < n; k += WG) {
			float gk = 0.0;
			float xk = SORTED_KEY(k);
			if (k >= m) {
				gk += 1.0 / (scale * bound_diff(BOUND, SORTED_KEY(k - m), xk) + eps);
			}
			if (k + m < n) {
				gk -= 1.0 / (scale * bound_diff(BOUND, xk, SORTED_KEY(k + m)) + eps);
			}
			g[gBase + SORTED_ROW(k) * stride] = gcoef * gk;
		}
	}
	float acc = 0.0;
	for (uint i = t; i + m < n; i += WG) {
		acc += e2_log(scale * bound_diff(BOUND, SORTED_KEY(i), SORTED_KEY(i + m)) + eps);
	}
	return acc;
}
#endif

#endif
