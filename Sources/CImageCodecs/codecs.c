#include "CImageCodecs.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

void tc_free(void *pointer) { free(pointer); }

// libpng's simplified API handles palettes, grey and 16-bit. It is asked for RGBA and the alpha is then dropped, as
// Pillow's convert("RGB") does; asking for RGB would composite onto black instead.
int tc_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, uint8_t **pixels, int *width, int *height, char *error, size_t error_size) {
  png_image image;
  memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, data, size)) {
    snprintf(error, error_size, "%s", image.message);
    return -1;
  }
  // The header gives the size before anything is decoded: a few-kB file may claim 12000x12000.
  if ((uint64_t)image.width * image.height > max_pixels) {
    *width = (int)image.width;
    *height = (int)image.height;
    png_image_free(&image);
    return -2;
  }
  image.format = PNG_FORMAT_RGBA;
  size_t bytes = PNG_IMAGE_SIZE(image);
  uint8_t *buffer = malloc(bytes);
  if (!buffer) {
    png_image_free(&image);
    snprintf(error, error_size, "out of memory for a %ux%u image", image.width, image.height);
    return -1;
  }
  if (!png_image_finish_read(&image, NULL, buffer, 0, NULL)) {
    snprintf(error, error_size, "%s", image.message);
    free(buffer);
    return -1;
  }
  size_t count = (size_t)image.width * image.height;
  for (size_t i = 0; i < count; i++) memmove(buffer + 3 * i, buffer + 4 * i, 3);
  *pixels = buffer;
  *width = (int)image.width;
  *height = (int)image.height;
  return 0;
}

// libjpeg ends the process on errors unless error_exit jumps back; this is the documented way to recover.
struct jpeg_failure {
  struct jpeg_error_mgr manager;
  jmp_buf jump;
  char *message;
  size_t message_size;
};

static void jpeg_fail(j_common_ptr info) {
  struct jpeg_failure *failure = (struct jpeg_failure *)info->err;
  char text[JMSG_LENGTH_MAX];
  (*info->err->format_message)(info, text);
  snprintf(failure->message, failure->message_size, "%s", text);
  longjmp(failure->jump, 1);
}

// A truncated file is an error here, where libjpeg would only warn and pad the image with grey.
static void jpeg_warn(j_common_ptr info, int level) {
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(info);
}

int tc_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, uint8_t **pixels, int *width, int *height, char *error, size_t error_size) {
  struct jpeg_decompress_struct info;
  struct jpeg_failure failure;
  uint8_t *volatile buffer = NULL;
  info.err = jpeg_std_error(&failure.manager);
  failure.manager.error_exit = jpeg_fail;
  failure.manager.emit_message = jpeg_warn;
  failure.message = error;
  failure.message_size = error_size;
  if (setjmp(failure.jump)) {
    jpeg_destroy_decompress(&info);
    free(buffer);
    return -1;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, (unsigned long)size);
  jpeg_read_header(&info, TRUE);
  // The header gives the size before anything is allocated: a 786-byte file may claim 40000x40000.
  if ((uint64_t)info.image_width * info.image_height > max_pixels) {
    *width = (int)info.image_width;
    *height = (int)info.image_height;
    jpeg_destroy_decompress(&info);
    return -2;
  }
  info.out_color_space = JCS_RGB;
  jpeg_start_decompress(&info);
  size_t stride = (size_t)info.output_width * 3;
  buffer = malloc(stride * info.output_height);
  if (!buffer) {
    snprintf(error, error_size, "out of memory for a %ux%u image", info.output_width, info.output_height);
    jpeg_destroy_decompress(&info);
    return -1;
  }
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = buffer + stride * info.output_scanline;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  *width = (int)info.output_width;
  *height = (int)info.output_height;
  jpeg_destroy_decompress(&info);
  *pixels = buffer;
  return 0;
}
