#version 450
// Per-channel partial sums of batch normalisation over one box of x, which
// is viewed as [N, C, S] (S = H*W, or 1 for [N, C]): rows [0, rows) x
// channels [0, cb) x plane positions [0, sb) relative to the box's first
// element, which is x[xoff] in the bound segment. OP (specialization
// constant):
//   0 forward: s1 = sum(x - shift), s2 = sum((x - shift)^2), shift = the
//     first value of the workgroup's chunk of the channel;
//   1 backward: s1 = sum(dy), s2 = sum(dy * xhat) with the forward's
//     statistics (stats rows ST_SHIFT, ST_MEANREL, ST_INVSTD).
// VEC (specialization constant) reads x and dy as vec4 units: 0 none; 1
// four neighbouring positions of a plane (S, sb and the offsets are then
// counted in units of 4); 2 four neighbouring channels of a row of [N, C]
// (S = 1; C, cb, c0 and the offsets counted in units of 4). RELU
// (specialization constant, OP 1) takes dy only where the output m of a
// layer fused with its ReLU (bound at 4) is positive. On CPU devices
// a vec4 load costs little more than a scalar one.
//
// A workgroup is TX x TY invocations (TX = WG / TY): TX neighbouring
// channels (units), each summed by TY invocations over a chunk of `chunk`
// rows; the TY invocations of a channel take consecutive units of the
// chunk's flattened (row, position) range, so neighbouring invocations read
// neighbouring addresses within a plane. Each workgroup leaves one Part per
// channel in slot (pbase + its chunk index) % slots; batchnorm_finalize.comp
// combines the slots. With ACC set, the slots were zeroed first and a
// workgroup adds its sums to what the slot holds (an earlier dispatch's
// workgroup of the same slot), so any number of pieces fits a bounded
// number of slots; without it, it writes the slot.
#include "common.glsl"
#include "batchnorm_common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint TY = 256;
layout(constant_id = 2) const uint OP = 0;
layout(constant_id = 3) const uint ACC = 0;
layout(constant_id = 4) const uint VEC = 0;
layout(constant_id = 5) const uint RELU = 0;
layout(local_size_x_id = 0) in;
const uint TX = WG / TY;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 0) readonly buffer XV { vec4 xv[]; };
layout(binding = 1) readonly buffer DY { float dy[]; };
layout(binding = 1) readonly buffer DYV { vec4 dyv[]; };
layout(binding = 2) readonly buffer Stats { float stats[]; };
layout(binding = 3) buffer P { Part part[]; };
layout(binding = 4) readonly buffer M { float m[]; };
layout(binding = 4) readonly buffer MV { vec4 mv[]; };
layout(push_constant) uniform Push {
	uint C;        // channels (units) of x
	uint S;        // plane size (units) of x
	uint rows;     // the box: rows,
	uint cb;       // channels (units)
	uint sb;       // and plane positions (units)
	uint chunk;    // rows per workgroup
	uint cgroups;  // workgroups along the box's channels: ceil(cb / TX)
	uint xoff;     // the box's first unit in x's and dy's bound segments
	uint dyoff;
	uint c0;       // the box's first channel (in channels, not units)
	uint pbase;    // partial slot of the dispatch's first chunk
	uint slots;
	uint statsoff; // stats[statsoff + row * CH + channel]
	uint poff;     // part[poff + slot * CH + channel]
	uint CH;       // channels of x
	uint moff;     // RELU: the box's first unit in m's bound segment
};

shared vec4 sh1[WG];
shared vec4 sh2[WG];

// The statistics row r of the unit's channels (VEC 2: four of them).
vec4 stat(uint r, uint cc) {
	uint at = statsoff + r * CH + c0;
	if (VEC == 2) {
		at += 4 * cc;
		return vec4(stats[at], stats[at + 1], stats[at + 2], stats[at + 3]);
	}
	return vec4(stats[at + cc]);
}

// Adds this workgroup's sums q of channel c to the slot at.
void leave(uint at, Part q) {
	if (ACC != 0) {
		Part o = part[at];
		if (OP == 0 && o.n != 0) {
			// Move the sums to the slot's shift, a value of the same channel
			// (so d is small beside a large mean): sum(v + d), sum((v + d)^2).
			float d = q.shift - o.shift;
			float fn = float(q.n);
			q.s2 += d * (2.0 * q.s1 + fn * d);
			q.s1 += fn * d;
			q.shift = o.shift;
		}
		q.s1 += o.s1;
		q.s2 += o.s2;
		q.n += o.n;
	}
	part[at] = q;
}

void main() {
	uint g = group_index();
	uint cg = g % cgroups;
	uint ck = g / cgroups;
	uint lid = gl_LocalInvocationID.x;
	uint ty = lid % TY;
	uint cc = cg * TX + lid / TY;
	uint ra = ck * chunk;
	bool live = cc < cb && ra < rows;
	uint cnt = live ? (min(rows, ra + chunk) - ra) * sb : 0;

	vec4 shift = vec4(0.0);
	vec4 meanrel = vec4(0.0);
	if (live) {
		if (OP == 0) {
			uint first = xoff + (ra * C + cc) * S;
			shift = VEC == 0 ? vec4(x[first]) : VEC == 1 ? vec4(xv[first].x) : xv[first];
		} else {
			shift = stat(ST_SHIFT, cc);
			meanrel = stat(ST_MEANREL, cc);
		}
	}
	// Walk the chunk's flattened (row, position) range at stride TY without
	// dividing: a step is dn rows and ds positions, de units of memory; a
	// wrap past the end of the box's positions adds wrap more.
	uint dn = TY / sb;
	uint ds = TY - dn * sb;
	uint de = dn * C * S + ds;
	uint wrap = C * S - sb;
	uint s = ty % sb;
	uint e = ((ra + ty / sb) * C + cc) * S + s;
	vec4 a1 = vec4(0.0);
	vec4 a2 = vec4(0.0);
	for (uint j = ty; j < cnt; j += TY) {
		vec4 v = VEC == 0 ? vec4(x[xoff + e]) : xv[xoff + e];
		v -= shift;
		if (OP == 0) {
			a1 += v;
			a2 += v * v;
		} else {
			vec4 d = VEC == 0 ? vec4(dy[dyoff + e]) : dyv[dyoff + e];
			if (RELU != 0) {
				vec4 out_ = VEC == 0 ? vec4(m[moff + e]) : mv[moff + e];
				d = mix(vec4(0.0), d, greaterThan(out_, vec4(0.0)));
			}
			a1 += d;
			a2 += d * (v - meanrel);
		}
		e += de;
		s += ds;
		if (s >= sb) {
			s -= sb;
			e += wrap;
		}
	}
	if (TY > 1) {
		sh1[lid] = a1;
		sh2[lid] = a2;
		barrier();
		for (uint h = TY / 2; h > 0; h /= 2) {
			if (ty < h) {
				sh1[lid] += sh1[lid + h];
				sh2[lid] += sh2[lid + h];
			}
			barrier();
		}
		a1 = sh1[lid];
		a2 = sh2[lid];
	}
	if (!live || ty != 0) {
		return;
	}
	if (OP == 1) {
		a2 *= stat(ST_INVSTD, cc);
	}
	uint base = poff + ((pbase + ck) % slots) * CH + c0;
	if (VEC == 2) {
		for (uint k = 0; k < 4; k++) {
			leave(base + 4 * cc + k, Part(shift[k], a1[k], a2[k], cnt));
		}
	} else if (VEC == 1) {
		// Sum the four lanes of the units pairwise.
		leave(base + cc, Part(shift.x, (a1.x + a1.y) + (a1.z + a1.w), (a2.x + a2.y) + (a2.z + a2.w), 4 * cnt));
	} else {
		leave(base + cc, Part(shift.x, a1.x, a2.x, cnt));
	}
}
