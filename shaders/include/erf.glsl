// The error function and the standard normal CDF in float32, for kernels
// that need them (unary.comp's NormalCDF, the E2MC bound): GLSL has no erf.
// Also e2_exp and e2_log, accurate replacements for the builtins, which erf
// needs and which the entropy kernels will want.
//
// erf in two pieces, with coefficients fitted for this file (weighted least
// squares iterated to near-minimax relative error against scipy's float64 erf
// and erfcx; the fit's own error is below 1e-8, under float32 rounding):
//   |x| < 1:  erf(x) = x * P(x^2), P of degree 6;
//   |x| >= 1: erfc(x) = exp(-x^2) * t * Q(t), t = 1 / (1 + x/2), Q of degree 9.
// exp(-x^2) is evaluated as exp(-h*h) * exp(-(x-h)*(x+h)) with h = x rounded
// to 12 significant bits, so that h*h is exact and the argument carries no
// rounding error (the erfc tail keeps its relative accuracy).
//
// Worst errors measured on lavapipe on dense grids (layers/unary_test.go
// holds them to slightly wider bounds):
//   e2_erf      1.5e-7 absolute (about 2 ulp of 1); 1.8e-7 relative, |x| < 1
//   e2_erfc     8.7e-7 relative down to the least normal float (x = 9.1)
//   normal_cdf  1.1e-7 absolute; 1e-6 relative, also deep in the lower tail
//   normal_pdf  5e-7 relative
//   e2_exp      2.6e-7 relative over the whole range (builtin: 1.7e-6)
//   e2_log      1.8e-7 relative, also near x = 1 (builtin: 1e-3 there)
#ifndef E2MCVK_ERF_GLSL
#define E2MCVK_ERF_GLSL

// e2_exp is exp(x) to a few ulp over the whole float range. The builtin
// exp is commonly exp2(x * log2(e)), whose rounded argument costs relative
// accuracy in proportion to |x| (lavapipe: 1.7e-6 at x = 88, 1e-6 at x = -20;
// Vulkan allows 3 + 2|x| ulp). Here x = k*ln2 + r with r in [-ln2/2, ln2/2]
// taken exactly (Cody-Waite: ln2 split so that k*LN2_HI is exact), and
// exp(x) = 2^k * exp(r); r is precise, so that no compiler folds the two
// parts of ln 2 together. Results below the smallest normal float may be
// flushed to 0; NaN stays NaN.
float e2_exp(float x) {
	const float LOG2E = 1.44269504088896341;
	const float LN2_HI = 0.693145751953125;     // 0x3f317200: 15 significant bits
	const float LN2_LO = 1.42860682030941723e-6; // ln 2 - LN2_HI
	float c = clamp(x, -104.0, 89.0);          // exp(89) overflows, exp(-104) is 0
	float k = floor(c * LOG2E + 0.5);
	precise float r = (c - k * LN2_HI) - k * LN2_LO;
	float y = ldexp(exp(r), int(k));
	return isnan(x) ? x : y;
}

// e2_log is ln(x) to a few ulp relative everywhere, also near x = 1, where
// builtin logs are only held to an absolute error (lavapipe: 1.3e-7; Vulkan
// allows 2^-21), a relative error of 1e-3 for ln(0.9999). x = m * 2^e with m
// in [sqrt(1/2), sqrt(2)); ln(m) = 2 atanh(f), f = (m-1)/(m+1), |f| < 0.172,
// by its odd series to f^11 (truncation below 1e-9 relative). ln(0) = -inf,
// ln(x < 0) = NaN, ln(inf) = inf; NaN stays NaN.
float e2_log(float x) {
	const float LN2 = 0.693147180559945309;
	if (!(x > 0.0)) {
		return x == 0.0 ? uintBitsToFloat(0xff800000u) : uintBitsToFloat(0x7fc00000u) + x;
	}
	if (isinf(x)) {
		return x;
	}
	int e;
	float m = frexp(x, e); // m in [1/2, 1)
	if (m < 0.70710678118654752) {
		m *= 2.0;
		e -= 1;
	}
	float u = m - 1.0; // exact
	float f = u / (2.0 + u);
	float s = f * f;
	float lm = 2.0 * f + 2.0 * f * s * (1.0 / 3.0 + s * (1.0 / 5.0 + s * (1.0 / 7.0 + s * (1.0 / 9.0 + s * (1.0 / 11.0)))));
	return float(e) * LN2 + lm;
}

// erf(x)/x for |x| < 1, as a polynomial in z = x*x.
float erf_small_(float z) {
	return 1.128379107e+00 + z * (-3.761262596e-01 + z * (1.128358692e-01 + z * (-2.685388550e-02
		+ z * (5.188467912e-03 + z * (-8.011423051e-04 + z * 7.857913442e-05)))));
}

// erfc(y) * exp(y*y) for y >= 1.
float erfcx_large_(float y) {
	float t = 1.0 / (1.0 + 0.5 * y);
	float q = 2.820948064e-01 + t * (2.820946276e-01 + t * (2.468431741e-01 + t * (1.760678440e-01
		+ t * (8.660548180e-02 + t * (-2.361206710e-02 + t * (2.048416249e-02 + t * (-2.394207865e-01
		+ t * (2.436598539e-01 + t * -7.494544983e-02))))))));
	return t * q;
}

// exp(-s*x*x) for x >= 0 and s = 1 or 0.5, without rounding in the argument.
// Beyond x = 16 the result is 0 in float32; the clamp keeps x = inf from
// making NaN (inf - inf) and lets NaN through.
float exp_neg_sq_(float x, float s) {
	x = x > 16.0 ? 16.0 : x;
	float h = uintBitsToFloat(floatBitsToUint(x) & 0xfffff000u);
	return e2_exp(-s * h * h) * e2_exp(-s * (x - h) * (x + h));
}

float e2_erf(float x) {
	float a = abs(x);
	if (a < 1.0) {
		return x * erf_small_(x * x);
	}
	// For a beyond ~4 the exp underflows the correction and this is +-1;
	// NaN propagates.
	float r = 1.0 - exp_neg_sq_(a, 1.0) * erfcx_large_(a);
	return x < 0.0 ? -r : r;
}

float e2_erfc(float x) {
	float a = abs(x);
	float r;
	if (a < 1.0) {
		r = 1.0 - a * erf_small_(a * a);
	} else {
		r = exp_neg_sq_(a, 1.0) * erfcx_large_(a);
	}
	return x < 0.0 ? 2.0 - r : r;
}

// Phi(x) = P(N(0,1) <= x) = 0.5 * (1 + erf(x / sqrt(2))). The lower tail is
// computed as 0.5 * erfc(|x|/sqrt(2)) with exp(-x*x/2) taken from x itself,
// so it keeps relative accuracy down to the smallest floats.
float normal_cdf(float x) {
	float a = abs(x);
	float y = a * 0.70710678118654752;
	float lower; // Phi(-|x|)
	if (y < 1.0) {
		lower = 0.5 - 0.5 * y * erf_small_(y * y);
	} else {
		lower = 0.5 * exp_neg_sq_(a, 0.5) * erfcx_large_(y);
	}
	return x < 0.0 ? lower : 1.0 - lower;
}

// phi(x), the standard normal density: the derivative of normal_cdf.
float normal_pdf(float x) {
	return 0.39894228040143268 * exp_neg_sq_(abs(x), 0.5);
}

#endif
