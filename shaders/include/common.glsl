// Shared by every kernel: the 2-D dispatch grid used to cover more
// workgroups than maxComputeWorkGroupCount[0] allows in one dimension.
#ifndef E2MCVK_COMMON_GLSL
#define E2MCVK_COMMON_GLSL

// Linear index of this workgroup in a grid dispatched as (x, y, 1) groups.
uint group_index() {
	return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
}

// Linear index of this invocation when each workgroup covers wg consecutive
// items. Kernels pass their local_size_x specialization constant: with
// glslc -O, gl_WorkGroupSize keeps its default value inside functions.
uint global_index(uint wg) {
	return group_index() * wg + gl_LocalInvocationID.x;
}

#endif
