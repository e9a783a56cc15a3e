// Decoding PNG and JPEG with the system's libpng and libjpeg(-turbo), errors returned instead of longjmp'd or exited.
#ifndef CIMAGECODECS_H
#define CIMAGECODECS_H
#include <stddef.h>
#include <stdint.h>

// Decodes an image file's bytes to 8-bit RGB, row-major, width*height*3 bytes in *pixels (free with tc_free).
// Returns 0 on success; -1 with a message in `error` (NUL-terminated, at most error_size bytes); -2 when the header
// claims more than max_pixels pixels (width*height), with *width and *height set and nothing decoded or allocated.
int tc_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, uint8_t **pixels, int *width, int *height, char *error, size_t error_size);
int tc_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, uint8_t **pixels, int *width, int *height, char *error, size_t error_size);
void tc_free(void *pointer);
#endif
