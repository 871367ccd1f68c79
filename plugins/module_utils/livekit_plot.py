# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small line chart written as a PNG with the standard library only (zlib, struct), for the load
test's report: stacked panels sharing a time axis, each with its series, reference lines and axis
labels in a built-in 5x7 pixel font. No plotting library is needed on the controller.

``read_png`` decodes what ``Canvas.png`` writes (8-bit RGB, any PNG filter), for the tests.
"""

from __future__ import annotations

import math
import struct
import zlib

# 5x7 glyphs: seven rows of five bits (bit 4 is the leftmost pixel), as 14 hex digits.
FONT = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F", "3": "1F02040201110E",
    "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E", "7": "1F010204080808",
    "8": "0E11110E11110E", "9": "0E11110F01020C", "A": "0E1111111F1111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F", "F": "1F10101E101010",
    "G": "0E11101711110F", "H": "1111111F111111", "I": "0E04040404040E",
    "J": "0702020202120C", "K": "11121418141211", "L": "1010101010101F", "M": "111B1515111111",
    "N": "11111915131111", "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404", "U": "1111111111110E",
    "V": "11111111110A04", "W": "1111111515150A", "X": "11110A040A1111",
    "Y": "1111110A040404", "Z": "1F01020408101F", " ": "00000000000000", ".": "00000000000C0C",
    "-": "0000001F000000", "%": "18190204081303", ":": "000C0C000C0C00", "/": "00010204081000",
    "(": "02040808080402", ")": "08040202020408", ",": "000000000C0408", "=": "00001F001F0000",
    "_": "0000000000001F", "+": "0004041F040400", ">": "08040201020408", "<": "02040810080402",
}
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (120, 120, 120), (225, 225, 225)


def _glyph(char):
    code = FONT.get(char.upper(), FONT[" "])
    return [int(code[i:i + 2], 16) for i in range(0, 14, 2)]


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width, height, background=WHITE):
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x, y, color):
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0, y0, x1, y1, color):
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            start, end = max(0, x0), min(self.width, x1 + 1)
            if end > start:
                i = (y * self.width + start) * 3
                self.pixels[i:i + (end - start) * 3] = bytes(color) * (end - start)

    def line(self, x0, y0, x1, y1, color, width=1):
        """A straight line (Bresenham), ``width`` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        steps = 0
        while steps <= dx - dy + 1:  # bounded: a line has at most dx + |dy| + 1 pixels
            steps += 1
            for ox in range(width):
                for oy in range(width):
                    self.set(x0 + ox, y0 + oy, color)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def dashed(self, x0, x1, y, color, dash=6):
        for x in range(x0, x1 + 1):
            if (x // dash) % 2 == 0:
                self.set(x, y, color)

    def text(self, x, y, text, color=BLACK, scale=1):
        """Text in the 5x7 font (upper case), left edge x, top y; returns the width drawn."""
        for n, char in enumerate(str(text)):
            rows = _glyph(char)
            for row, bits in enumerate(rows):
                for col in range(5):
                    if bits & (0x10 >> col):
                        self.rect(x + (n * 6 + col) * scale, y + row * scale,
                                  x + (n * 6 + col) * scale + scale - 1, y + row * scale + scale - 1, color)
        return len(str(text)) * 6 * scale

    def png(self):
        """The image as PNG bytes (8-bit RGB, filter 0 on every row)."""
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))

        def chunk(kind, data):
            return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack("!IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def nice_step(span, ticks=5):
    """A round tick step (1, 2 or 5 times a power of ten) for about ``ticks`` ticks over span."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def fmt(value):
    return ("%d" % value) if float(value).is_integer() else ("%.1f" % value)


def chart(panels, width=960, panel_height=170, title=""):
    """A PNG of stacked panels over one time axis (seconds from the start).

    panels: [{"title": str, "ymax": float or None, "series": [{"name", "color": (r, g, b),
    "points": [(seconds, value or None), ...]}], "hlines": [{"value", "color", "label"}]}]
    """
    left, right, top, gap = 70, 20, 34, 46
    height = top + len(panels) * (panel_height + gap) + 10
    canvas = Canvas(width, height)
    canvas.text(left, 10, title, BLACK, 2)
    xs = [p[0] for panel in panels for s in panel["series"] for p in s["points"]]
    x_max = max(xs) if xs else 1.0
    x_max = max(x_max, 1.0)
    plot_w = width - left - right
    for index, panel in enumerate(panels):
        y0 = top + index * (panel_height + gap) + 22
        y1 = y0 + panel_height - 22
        values = [p[1] for s in panel["series"] for p in s["points"] if p[1] is not None]
        values += [h["value"] for h in panel.get("hlines", [])]
        y_max = panel.get("ymax") or (max(values) * 1.15 if values and max(values) > 0 else 1.0)
        # Title and legend.
        x = left + canvas.text(left, y0 - 18, panel["title"], BLACK) + 18
        for series in panel["series"]:
            canvas.rect(x, y0 - 16, x + 14, y0 - 13, series["color"])
            x += 20 + canvas.text(x + 20, y0 - 18, series["name"], series["color"]) + 16
        # Grid and axes.
        step = nice_step(y_max, 4)
        tick = 0.0
        for _tick in range(12):
            if tick > y_max + 1e-9:
                break
            y = y1 - int((tick / y_max) * (y1 - y0))
            canvas.line(left, y, left + plot_w, y, LIGHT)
            label = fmt(tick)
            canvas.text(left - 8 - 6 * len(label), y - 3, label, GREY)
            tick += step
        x_step = nice_step(x_max, 10)
        tick = 0.0
        for _tick in range(24):
            if tick > x_max + 1e-9:
                break
            x = left + int(tick / x_max * plot_w)
            canvas.line(x, y1, x, y1 + 3, GREY)
            label = fmt(tick)
            canvas.text(x - 3 * len(label), y1 + 6, label, GREY)
            tick += x_step
        canvas.line(left, y0, left, y1, BLACK)
        canvas.line(left, y1, left + plot_w, y1, BLACK)
        for hline in panel.get("hlines", []):
            if 0 <= hline["value"] <= y_max:
                y = y1 - int(hline["value"] / y_max * (y1 - y0))
                canvas.dashed(left, left + plot_w, y, hline["color"])
                canvas.text(left + plot_w - 6 * len(hline["label"]) - 2, y - 9, hline["label"], hline["color"])
        for series in panel["series"]:
            previous = None
            for seconds, value in series["points"]:
                if value is None:
                    previous = None
                    continue
                point = (left + int(seconds / x_max * plot_w),
                         y1 - int(min(value, y_max) / y_max * (y1 - y0)))
                if previous:
                    canvas.line(previous[0], previous[1], point[0], point[1], series["color"], 2)
                else:
                    canvas.rect(point[0], point[1], point[0] + 1, point[1] + 1, series["color"])
                previous = point
    canvas.text(left + plot_w // 2 - 60, height - 12, "SECONDS FROM START", GREY)
    return canvas.png()


def read_png(data):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG; ValueError when it is not one."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("no PNG signature")
    pos, idat, header = 8, b"", None
    for _chunk in range(100000):
        if pos + 8 > len(data):
            raise ValueError("truncated chunk")
        length, kind = struct.unpack("!I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack("!I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError("bad CRC in %s" % kind.decode("latin-1"))
        if kind == b"IHDR":
            header = struct.unpack("!IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or pos == 8:
        raise ValueError("no IHDR chunk first")
    width, height, depth, color, _c, _f, interlace = header
    if (depth, color, interlace) != (8, 2, 0):
        raise ValueError("not 8-bit RGB without interlace")
    raw = zlib.decompress(idat)
    stride = width * 3
    if len(raw) != height * (stride + 1):
        raise ValueError("image data is %d bytes, not %d" % (len(raw), height * (stride + 1)))
    rows, prior = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prior[i], (prior[i - 3] if i >= 3 else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            elif kind != 0:
                raise ValueError("unknown filter %d" % kind)
        rows.append(bytes(line))
        prior = line
    return width, height, rows
