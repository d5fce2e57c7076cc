// Shared by the batch-normalisation kernels: the partial sums one workgroup
// of batchnorm_reduce.comp leaves per channel, the rows of the per-channel
// statistics tensor, and division by a constant without an integer divide.
#ifndef E2MCVK_BATCHNORM_COMMON_GLSL
#define E2MCVK_BATCHNORM_COMMON_GLSL

// One workgroup's sums for one channel. Forward: shift is the first value
// the workgroup read, s1 = sum(x - shift), s2 = sum((x - shift)^2) over its
// n values (sums about a value of the channel itself keep their digits when
// the mean is large and the spread small). Backward: s1 = sum(dy),
// s2 = sum(dy * xhat); shift and n are unused.
struct Part {
	float shift;
	float s1;
	float s2;
	uint n;
};

// Rows of the statistics tensor [ROWS, C] (layers/batchnorm.go names them):
// y = (x - shift) * scale + offset with xhat = ((x - shift) - meanrel) * invstd,
// and dx = gdy * dy + gx * (x - shift) + gconst.
const uint ST_SHIFT = 0;
const uint ST_MEANREL = 1;
const uint ST_INVSTD = 2;
const uint ST_SCALE = 3;
const uint ST_OFFSET = 4;
const uint ST_GDY = 5;
const uint ST_GX = 6;
const uint ST_GCONST = 7;

// floor(n / d) for every 32-bit n, given d's magic number m and shift l from
// divMagic (layers/batchnorm.go): a multiply-high and shifts, which costs
// far less than an integer division on CPUs and GPUs alike. l = 0 means d = 1.
uint fastdiv(uint n, uint m, uint l) {
	if (l == 0) {
		return n;
	}
	uint hi, lo;
	umulExtended(n, m, hi, lo);
	return (hi + ((n - hi) >> 1)) >> (l - 1);
}

#endif
