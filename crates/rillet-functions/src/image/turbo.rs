//! JPEG decoding through libjpeg-turbo (its TurboJPEG 3 interface, built from the source
//! that `turbojpeg-sys` bundles): SIMD inverse DCTs, colour conversion and upsampling, and
//! decoding at 1/2, 1/4 or 1/8 size in the DCT domain, which skips most of the work when
//! the image will be shrunk anyway.
//!
//! Every call goes through this thread's decompressor ([`with_decompressor`]), made anew
//! after any failure (libjpeg-turbo can carry a failed call's state into the next), set up
//! to stop at corrupt data instead of filling it with grey and to refuse more pixels or
//! progressive scans than allowed. A stream it refuses goes to the `image` crate, which
//! decides about it as before; the size a decode writes is checked against the stream's own
//! frame header first.

use std::cell::RefCell;
use std::ffi::{CStr, c_int};

use turbojpeg_sys as tj;

/// A DCT scale to decode at, `1/by` of the image, and how much larger than the result the
/// scaled image must be for it to be used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reduction {
    pub by: u32,
    pub margin: f64,
}

/// The DCT scales libjpeg-turbo decodes fastest (each has a SIMD or DC-only inverse DCT),
/// smallest image first; the other eighths (3/8, 5/8, …) decode no faster than the full
/// image here (bench/RESULTS.md, issue #29). The margins keep the result within 35 dB PSNR
/// of a full decode and the same resize on the sample photos: a DCT-scaled image is
/// sharper than a bilinear shrink by the same factor (31.5 dB where 1/2 is resized by
/// 1.0, 35.9 dB by 1.1, over 37 dB from 1.25), and 1/8 keeps only each 8×8 block's mean,
/// a box filter that a resize by less than 3 leaves visible (33.6-35 dB at 2).
pub(crate) const REDUCTIONS: [Reduction; 3] = [
    Reduction { by: 8, margin: 3.0 },
    Reduction { by: 4, margin: 1.2 },
    Reduction { by: 2, margin: 1.2 },
];

/// The whole image as a cropping region (libjpeg-turbo's `TJUNCROPPED`, which lives in
/// its header, not its library).
const UNCROPPED: tj::tjregion = tj::tjregion {
    x: 0,
    y: 0,
    w: 0,
    h: 0,
};

/// Progressive scans a decode may read: real encoders write about 10; a stream with
/// thousands is an attack on decode time.
const SCAN_LIMIT: c_int = 500;

/// The header of a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
    pub colour: Colour,
    /// Width of the image's iMCU (8 to 32 pixels, by its chroma subsampling): where a
    /// region decode may start; 0 when the subsampling is unusual and regions are not
    /// decoded.
    pub mcu_width: u32,
}

/// How a JPEG's pixels come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Colour {
    /// One grey channel.
    Grey,
    /// Three channels (stored as YCbCr or RGB).
    Rgb,
    /// CMYK or YCCK (Adobe), which the caller converts itself.
    Other,
}

/// The smallest scale (as `1/by`) at which an image of `header`'s size still covers, with
/// its margin, the image shrunk by `factor`; `None` when only the full size does.
pub(crate) fn reduction_for(header: Header, factor: f64) -> Option<u32> {
    let covers = |side: u32, r: &Reduction| {
        let wanted = (f64::from(side) * factor * r.margin).ceil().max(1.0);
        f64::from(scaled(side, r.by)) >= wanted
    };
    REDUCTIONS
        .iter()
        .find(|r| covers(header.width, r) && covers(header.height, r))
        .map(|r| r.by)
}

/// Side `side` of an image decoded at `1/reduction` of its size (libjpeg rounds up).
pub(crate) fn scaled(side: u32, reduction: u32) -> u32 {
    side.div_ceil(reduction)
}

/// The pixel format and channel count pixels of `colour` are decoded in.
fn pixel_format(colour: Colour) -> Result<(tj::TJPF, usize), String> {
    match colour {
        Colour::Grey => Ok((tj::TJPF_TJPF_GRAY, 1)),
        Colour::Rgb => Ok((tj::TJPF_TJPF_RGB, 3)),
        Colour::Other => Err("CMYK JPEGs are not decoded here".to_string()),
    }
}

/// A TurboJPEG decompressor, one per thread.
pub(crate) struct Decompressor(tj::tjhandle);

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// `f` with this thread's decompressor (made on first use); an error if libjpeg-turbo
/// cannot make one or the thread's is in use further up the stack.
pub(crate) fn with_decompressor<R>(
    f: impl FnOnce(&mut Decompressor) -> Result<R, String>,
) -> Result<R, String> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot
            .try_borrow_mut()
            .map_err(|_| "the JPEG decompressor of this thread is busy".to_string())?;
        if slot.is_none() {
            *slot = Some(Decompressor::new()?);
        }
        let result = f(slot.as_mut().expect("made above"));
        if result.is_err() {
            // libjpeg-turbo may keep the state of a failed call (a half-read header, the
            // last image's size) into the next one: a fresh decompressor starts clean.
            *slot = None;
        }
        result
    })
}

/// The segments of a JPEG's header, `(marker, body)`, from after the start-of-image marker
/// to the first scan; the walk stops at anything that is not a well-formed segment.
pub(crate) fn segments(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 2; // after the start-of-image marker
    std::iter::from_fn(move || {
        loop {
            if at + 4 > bytes.len() || bytes[at] != 0xFF {
                return None;
            }
            let marker = bytes[at + 1];
            if marker == 0xFF {
                at += 1; // fill byte
                continue;
            }
            if marker == 0xDA || marker == 0xD9 {
                return None; // the scan (or the end): the header is over
            }
            let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let body = bytes.get(at + 4..(at + 2 + length).max(at + 4))?;
            at += 2 + length.max(2);
            return Some((marker, body));
        }
    })
}

/// Width and height in the first start-of-frame segment of a JPEG's header.
fn frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    // SOF0-SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
    let (_, body) = segments(bytes).find(|(marker, _)| {
        (0xC0..=0xCF).contains(marker) && ![0xC4, 0xC8, 0xCC].contains(marker)
    })?;
    let number = |at: usize| {
        Some(u32::from(u16::from_be_bytes([
            *body.get(at)?,
            *body.get(at + 1)?,
        ])))
    };
    Some((number(3)?, number(1)?))
}

impl Decompressor {
    fn new() -> Result<Self, String> {
        // SAFETY: tj3Init has no preconditions; a null handle is its failure.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err("libjpeg-turbo could not make a decompressor".to_string());
        }
        let mut this = Self(handle);
        // Corrupt data is an error rather than a warning with grey blocks.
        this.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        this.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
        Ok(this)
    }

    fn set(&mut self, param: tj::TJPARAM, value: c_int) -> Result<(), String> {
        // SAFETY: a live handle and a parameter of the TurboJPEG 3 interface.
        if unsafe { tj::tj3Set(self.0, param as c_int, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, param: tj::TJPARAM) -> c_int {
        // SAFETY: a live handle and a parameter of the TurboJPEG 3 interface.
        unsafe { tj::tj3Get(self.0, param as c_int) }
    }

    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        let text = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) };
        text.to_string_lossy().into_owned()
    }

    /// Read the header of `bytes`, refusing images over `max_pixels`; `None` for a JPEG this
    /// decoder does not scale (lossless or 12/16-bit samples).
    pub(crate) fn header(
        &mut self,
        bytes: &[u8],
        max_pixels: u64,
    ) -> Result<Option<Header>, String> {
        self.set(
            tj::TJPARAM_TJPARAM_MAXPIXELS,
            c_int::try_from(max_pixels).unwrap_or(c_int::MAX),
        )?;
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        let read = unsafe { tj::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as _) };
        if read != 0 {
            return Err(self.error());
        }
        if self.get(tj::TJPARAM_TJPARAM_LOSSLESS) != 0
            || self.get(tj::TJPARAM_TJPARAM_PRECISION) != 8
        {
            return Ok(None);
        }
        let side = |param| u32::try_from(self.get(param)).unwrap_or(0);
        let colour = match self.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS {
            tj::TJCS_TJCS_GRAY => Colour::Grey,
            tj::TJCS_TJCS_RGB | tj::TJCS_TJCS_YCbCr => Colour::Rgb,
            _ => Colour::Other,
        };
        // The iMCU width of each subsampling (libjpeg-turbo's table lives in its header).
        let mcu_width = match self.get(tj::TJPARAM_TJPARAM_SUBSAMP) as tj::TJSAMP {
            tj::TJSAMP_TJSAMP_444 | tj::TJSAMP_TJSAMP_GRAY | tj::TJSAMP_TJSAMP_440 => 8,
            tj::TJSAMP_TJSAMP_441 => 8,
            tj::TJSAMP_TJSAMP_422 | tj::TJSAMP_TJSAMP_420 => 16,
            tj::TJSAMP_TJSAMP_411 => 32,
            _ => 0,
        };
        let header = Header {
            width: side(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            height: side(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
            colour,
            mcu_width,
        };
        // The size the decode will write must be this stream's: a header read can end
        // early and report what an earlier call left behind.
        if frame_size(bytes) != Some((header.width, header.height)) {
            return Err("the JPEG's frame header does not match what was read".to_string());
        }
        Ok(Some(header))
    }

    /// Decode `bytes`, whose header is `header`, at `1/reduction` of its size (1, 2, 4 or
    /// 8) into `out`, which holds exactly the scaled image in `header.colour` (grey: one
    /// byte a pixel, RGB: three), rows packed.
    pub(crate) fn decode(
        &mut self,
        bytes: &[u8],
        header: Header,
        reduction: u32,
        out: &mut [u8],
    ) -> Result<(), String> {
        let (format, channels) = pixel_format(header.colour)?;
        let (width, height) = (
            scaled(header.width, reduction) as usize,
            scaled(header.height, reduction) as usize,
        );
        if out.len() != width * height * channels {
            return Err(format!(
                "a buffer of {} bytes for a {width}×{height} image of {channels} channels",
                out.len()
            ));
        }
        let pitch = c_int::try_from(width * channels).map_err(|_| "image too wide".to_string())?;
        let factor = tj::tjscalingfactor {
            num: 1,
            denom: reduction as c_int,
        };
        // SAFETY: a live handle and a scaling factor libjpeg-turbo supports; the whole
        // image (a region set by an earlier decode must not carry over).
        if unsafe { tj::tj3SetScalingFactor(self.0, factor) } != 0
            || unsafe { tj::tj3SetCroppingRegion(self.0, UNCROPPED) } != 0
        {
            return Err(self.error());
        }
        // `out` holds `height` rows of `pitch` bytes, which is what libjpeg-turbo writes
        // for this header, scaling factor and pixel format.
        self.decompress(bytes, out, pitch, format)
    }

    /// Decompress `bytes` into `out`, rows `pitch` bytes apart in `format`, as the scaling
    /// factor and cropping region set on the handle make it.
    fn decompress(
        &mut self,
        bytes: &[u8],
        out: &mut [u8],
        pitch: c_int,
        format: tj::TJPF,
    ) -> Result<(), String> {
        // SAFETY: the callers size `out` for `pitch` and the image the handle's settings
        // give; `bytes` outlives the call.
        let decoded = unsafe {
            tj::tj3Decompress8(
                self.0,
                bytes.as_ptr(),
                bytes.len() as _,
                out.as_mut_ptr(),
                pitch,
                format as c_int,
            )
        };
        if decoded != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Decode only the `(x, y, width, height)` region of `bytes` (whose header is
    /// `header`) at full size into `out`, which holds exactly the region's pixels in
    /// `header.colour`, rows packed. `x` must be a multiple of `header.mcu_width`.
    /// libjpeg-turbo skips the colour conversion and inverse DCTs of the blocks outside
    /// the region, and reads no further than its last row.
    pub(crate) fn decode_region(
        &mut self,
        bytes: &[u8],
        header: Header,
        (x, y, width, height): (u32, u32, u32, u32),
        out: &mut [u8],
    ) -> Result<(), String> {
        let (format, channels) = pixel_format(header.colour)?;
        let fits = header.mcu_width > 0
            && x % header.mcu_width == 0
            && width > 0
            && height > 0
            && x.checked_add(width).is_some_and(|r| r <= header.width)
            && y.checked_add(height).is_some_and(|b| b <= header.height);
        if !fits || out.len() != width as usize * height as usize * channels {
            return Err(format!(
                "no region {width}×{height} at ({x}, {y}) of a {}×{} JPEG into {} bytes",
                header.width,
                header.height,
                out.len()
            ));
        }
        let int = |v: u32| c_int::try_from(v).map_err(|_| "image too large".to_string());
        let region = tj::tjregion {
            x: int(x)?,
            y: int(y)?,
            w: int(width)?,
            h: int(height)?,
        };
        let pitch = int(width * channels as u32)?;
        let whole = tj::tjscalingfactor { num: 1, denom: 1 };
        // SAFETY: a live handle, `bytes` outlives the call; the header is read again so
        // the region is checked against this image's.
        let read = unsafe { tj::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as _) };
        if read != 0
            || frame_size(bytes) != Some((header.width, header.height))
            // SAFETY: a live handle, a supported factor, a region within the image.
            || unsafe { tj::tj3SetScalingFactor(self.0, whole) } != 0
            || unsafe { tj::tj3SetCroppingRegion(self.0, region) } != 0
        {
            return Err(self.error());
        }
        // `out` holds `height` rows of `pitch` bytes, what libjpeg-turbo writes for this
        // region and pixel format.
        let decoded = self.decompress(bytes, out, pitch, format);
        // The next decode starts uncropped whatever happened.
        // SAFETY: a live handle.
        unsafe { tj::tj3SetCroppingRegion(self.0, UNCROPPED) };
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32, grey: bool) -> Vec<u8> {
        let rgb = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, 90])
        });
        let image = if grey {
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8())
        } else {
            image::DynamicImage::ImageRgb8(rgb)
        };
        super::super::codec::encode(&image, image::ImageFormat::Jpeg, 90).unwrap()
    }

    #[test]
    fn decodes_colour_and_grey_at_every_reduction() {
        for grey in [false, true] {
            let bytes = jpeg(101, 37, grey);
            with_decompressor(|d| {
                let header = d.header(&bytes, u64::MAX)?.expect("an 8-bit lossy JPEG");
                assert_eq!((header.width, header.height), (101, 37));
                assert_eq!(header.colour, if grey { Colour::Grey } else { Colour::Rgb });
                for reduction in [1, 2, 4, 8] {
                    let (w, h) = (scaled(101, reduction), scaled(37, reduction));
                    let mut out = vec![0; (w * h) as usize * if grey { 1 } else { 3 }];
                    d.decode(&bytes, header, reduction, &mut out)?;
                    // A wrong-sized buffer is refused, not written past.
                    assert!(d.decode(&bytes, header, reduction, &mut out[1..]).is_err());
                }
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn a_failure_or_an_early_end_leaves_nothing_behind_for_the_next_image() {
        let small = jpeg(16, 16, false);
        let (large, width, height) = (jpeg(64, 48, false), 64, 48);
        let decode = |bytes: &[u8]| {
            with_decompressor(|d| {
                let header = d.header(bytes, u64::MAX)?.ok_or("not scaled")?;
                let mut out = vec![0; (header.width * header.height * 3) as usize];
                d.decode(bytes, header, 1, &mut out)?;
                Ok((header.width, header.height))
            })
        };
        assert_eq!(decode(&small), Ok((16, 16)));
        // A JFIF version libjpeg-turbo does not know: a warning, so an error here.
        let mut odd = small.clone();
        if let Some(at) = odd.windows(5).position(|w| w == b"JFIF\0") {
            odd[at + 5] = 3;
            assert!(decode(&odd).is_err());
        }
        // The image before does not leak into the next one.
        assert_eq!(decode(&large), Ok((width, height)));
        // A stream that ends before any frame reports no size at all, not the last one's.
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
        assert_eq!(decode(&small), Ok((16, 16)));
    }

    #[test]
    fn corrupt_data_is_an_error_not_grey() {
        let mut bytes = jpeg(256, 256, false);
        let middle = bytes.len() / 2;
        bytes[middle..middle + 64].fill(0xFF);
        let failed = with_decompressor(|d| {
            let header = d.header(&bytes, u64::MAX)?.expect("header intact");
            let mut out = vec![0; 256 * 256 * 3];
            d.decode(&bytes, header, 1, &mut out)
        });
        assert!(failed.is_err());
        // Not even a header.
        assert!(with_decompressor(|d| d.header(b"not a jpeg", u64::MAX)).is_err());
    }
}
