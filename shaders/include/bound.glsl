// The bounding of E2MC (DESIGN.md section 2): 0 none, 1 sigmoid (VICReg),
// 2 standard normal CDF (SwAV, SimSiam); its derivative; and differences of
// bounded values computed from the unbounded ones.
//
// Why the differences: a bounded value near 1 has float32 resolution 6e-8,
// while the m-spacings of saturated tails are often 1e-5 or less, so
// subtracting rounded bounded values loses the entropy's accuracy. The bounds
// are increasing, so the columns are sorted by z itself and each spacing
// bound(b) - bound(a) is computed to float32 relative precision.
#ifndef E2MCVK_BOUND_GLSL
#define E2MCVK_BOUND_GLSL

#include "erf.glsl"

float sigmoid_(float z) {
	// exp of a non-positive argument only: no overflow, relative accuracy
	// in both tails.
	float e = e2_exp(-abs(z));
	return z >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

float bound_value(uint mode, float z) {
	if (mode == 1u) {
		return sigmoid_(z);
	}
	if (mode == 2u) {
		return normal_cdf(z);
	}
	return z;
}

float bound_slope(uint mode, float z) {
	if (mode == 1u) {
		float s = sigmoid_(z);
		return s * (1.0 - s);
	}
	if (mode == 2u) {
		return normal_pdf(z);
	}
	return 1.0;
}

// expm1_ is exp(x) - 1 to float32 relative precision.
float expm1_(float x) {
	if (abs(x) < 0.5) {
		// Taylor series; the first omitted term is below 2e-10 relative.
		float p = 1.0 / 362880.0;
		p = p * x + 1.0 / 40320.0;
		p = p * x + 1.0 / 5040.0;
		p = p * x + 1.0 / 720.0;
		p = p * x + 1.0 / 120.0;
		p = p * x + 1.0 / 24.0;
		p = p * x + 1.0 / 6.0;
		p = p * x + 0.5;
		p = p * x + 1.0;
		return p * x;
	}
	return e2_exp(x) - 1.0;
}

// normal_diff is Phi(b) - Phi(a) for a <= b.
float normal_diff(float a, float b) {
	const float r2 = 0.7071067811865476;
	if (b - a > 0.5) {
		// Far apart: the difference of the CDFs, taken on the side where
		// they are small, cancels little.
		if (a >= 0.0) {
			return 0.5 * (e2_erfc(a * r2) - e2_erfc(b * r2));
		}
		if (b <= 0.0) {
			return 0.5 * (e2_erfc(-b * r2) - e2_erfc(-a * r2));
		}
		return 0.5 * (e2_erf(b * r2) - e2_erf(a * r2));
	}
	// Close: integrate the density, 3-point Gauss-Legendre on panels of at
	// most 1/8 (relative error under 1e-7 for |z| < 8).
	const float x1 = 0.7745966692414834; // sqrt(3/5)
	uint k = max(1u, uint(ceil((b - a) * 8.0)));
	float h = (b - a) / float(k);
	float sum = 0.0;
	for (uint i = 0u; i < k; i++) {
		float mid = a + h * (float(i) + 0.5);
		sum += 8.0 / 9.0 * normal_pdf(mid) +
			5.0 / 9.0 * (normal_pdf(mid - 0.5 * h * x1) + normal_pdf(mid + 0.5 * h * x1));
	}
	return 0.5 * h * sum;
}

// bound_diff is bound(b) - bound(a) for finite a <= b.
float bound_diff(uint mode, float a, float b) {
	if (mode == 1u) {
		// sigmoid(b) - sigmoid(a) = (1 - exp(a - b)) sigmoid(b) sigmoid(-a)
		return -expm1_(a - b) * sigmoid_(b) * sigmoid_(-a);
	}
	if (mode == 2u) {
		return normal_diff(a, b);
	}
	return b - a;
}

#endif
