// Carries libtorch's pkg-config flags (include paths, -ltorch_cpu -lc10) to the targets that depend on it.
// The API that Swift sees is CTorch's ctorch.h.
