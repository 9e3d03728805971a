"""The runtime's default per-image decoding budget (qsenn_runtime.load and the CLI; no imports,
so that `qsenn --help` shows them at once)."""

# What one image may cost to decode, the runtime's own limits: an application that raises, lowers
# or disables Pillow's global `Image.MAX_IMAGE_PIXELS` (89.5 Mpx, ~2.9 GB peak for a 1×80 Mpx
# PNG) does not change what the runtime accepts. 25 Mpx holds a 24-megapixel photo (6000×4000);
# a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale instead (never below what the model needs).
MAX_IMAGE_PIXELS = 25_000_000
# Pillow holds RGB, RGBA, CMYK, I and F at 4 bytes a pixel, L and P at 1, plus 8 bytes of row
# pointer per row: 128 MiB holds a 25 Mpx RGB image (100 MB) but not a 1×25 Mpx sliver (300 MB).
MAX_IMAGE_BYTES = 128 << 20
