// zlib's inflate, for the gzip resources of the StableDiffusion target (the open_clip merges file).
#include <zlib.h>
