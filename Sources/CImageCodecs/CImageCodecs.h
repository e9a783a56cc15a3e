// The system's libpng and libjpeg(-turbo), read by Rewards/ImageIO.swift.
#include <stdio.h>
#include <png.h>
#include <jpeglib.h>
