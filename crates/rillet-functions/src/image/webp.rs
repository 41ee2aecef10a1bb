//! WebP decoding through libwebp (built from the source `libwebp-sys` bundles) for the
//! operators that shrink every image: libwebp scales while it converts the decoded rows to
//! RGB, so the full-size RGB image is never made and the resize that follows starts from a
//! much smaller one. VP8 predicts each block from its decoded neighbours, so the decoding
//! itself stays full size; what is saved is the colour conversion and most of the resize.
//!
//! Plain decodes stay with the `image` crate: only the scaled path is libwebp's.

use std::ffi::c_int;

use libwebp_sys as webp;

/// What a WebP's header tells about the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Features {
    pub width: u32,
    pub height: u32,
    pub alpha: bool,
}

/// The header of a still WebP without EXIF data; `None` for anything else (not a WebP, an
/// animation, an image whose EXIF orientation the full decode applies, a header libwebp
/// refuses), which the caller decodes in full.
pub(crate) fn features(bytes: &[u8]) -> Option<Features> {
    let mut features = std::mem::MaybeUninit::<webp::WebPBitstreamFeatures>::zeroed();
    // SAFETY: `bytes` outlives the call and `features` is a writable struct of the type.
    let status =
        unsafe { webp::WebPGetFeatures(bytes.as_ptr(), bytes.len(), features.as_mut_ptr()) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return None;
    }
    // SAFETY: libwebp filled it on success (and it started zeroed).
    let features = unsafe { features.assume_init() };
    let alpha = features.has_alpha != 0;
    if features.has_animation != 0 || chunks(bytes).any(|c| c == *b"EXIF") {
        return None;
    }
    // The full decode takes alpha from the extended header's flag; where libwebp reads the
    // stream otherwise, the two would give different modes.
    const ALPHA_FLAG: u8 = 0x10;
    if bytes.get(12..16) == Some(b"VP8X")
        && bytes
            .get(20)
            .is_none_or(|flags| (flags & ALPHA_FLAG != 0) != alpha)
    {
        return None;
    }
    Some(Features {
        width: u32::try_from(features.width).ok()?,
        height: u32::try_from(features.height).ok()?,
        alpha,
    })
}

/// The kinds (four-character codes) of a WebP's chunks, in order, as far as they are whole.
fn chunks(bytes: &[u8]) -> impl Iterator<Item = [u8; 4]> + '_ {
    let mut at = 12; // after "RIFF", the size and "WEBP"
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + 8)?;
        let kind: [u8; 4] = header[..4].try_into().ok()?;
        let size = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
        at = at
            .checked_add(8)?
            .checked_add(size)?
            .checked_add(size & 1)?;
        Some(kind)
    })
}

/// Decode `bytes` (whose header is `features`) scaled to `width × height` into `out`, which
/// holds exactly that many RGB (or, with alpha, RGBA) pixels, rows packed. libwebp's
/// rescaler averages the pixels each output pixel covers.
pub(crate) fn decode_scaled(
    bytes: &[u8],
    features: Features,
    (width, height): (u32, u32),
    out: &mut [u8],
) -> Result<(), String> {
    let channels = if features.alpha { 4 } else { 3 };
    let stride = width as usize * channels;
    if width == 0 || height == 0 || out.len() != stride * height as usize {
        return Err(format!(
            "a buffer of {} bytes for a {width}×{height} image of {channels} channels",
            out.len()
        ));
    }
    let int = |v: usize| c_int::try_from(v).map_err(|_| "image too large".to_string());
    let mut config = std::mem::MaybeUninit::<webp::WebPDecoderConfig>::zeroed();
    // SAFETY: a writable config of the type libwebp initialises.
    if !unsafe { webp::WebPInitDecoderConfig(config.as_mut_ptr()) } {
        return Err("libwebp refused its own decoder version".to_string());
    }
    // SAFETY: initialised just above.
    let mut config = unsafe { config.assume_init() };
    config.options.use_scaling = 1;
    config.options.scaled_width = int(width as usize)?;
    config.options.scaled_height = int(height as usize)?;
    config.output.colorspace = if features.alpha {
        webp::WEBP_CSP_MODE::MODE_RGBA
    } else {
        webp::WEBP_CSP_MODE::MODE_RGB
    };
    config.output.is_external_memory = 1;
    config.output.u.RGBA = webp::WebPRGBABuffer {
        rgba: out.as_mut_ptr(),
        stride: int(stride)?,
        size: out.len(),
    };
    // SAFETY: `bytes` outlives the call; the output is `out`, of the size and stride the
    // scaled image needs, which libwebp checks against `size` before writing.
    let status = unsafe { webp::WebPDecode(bytes.as_ptr(), bytes.len(), &mut config) };
    // SAFETY: frees only what libwebp allocated itself (nothing, with external memory).
    unsafe { webp::WebPFreeDecBuffer(&mut config.output) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(format!("libwebp could not decode the image ({status:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webp(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        });
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::WebP,
            )
            .unwrap();
        bytes
    }

    #[test]
    fn scales_while_decoding_and_refuses_what_it_cannot_read() {
        let bytes = webp(400, 300);
        let header = features(&bytes).unwrap();
        assert_eq!(
            (header.width, header.height, header.alpha),
            (400, 300, false)
        );
        let mut out = vec![0; 100 * 75 * 3];
        decode_scaled(&bytes, header, (100, 75), &mut out).unwrap();
        // The gradient survives the scaling: red rises along a row, green down a column.
        let at = |x: usize, y: usize, c: usize| out[(y * 100 + x) * 3 + c];
        assert!(at(90, 10, 0) > at(10, 10, 0) + 150 && at(10, 70, 1) > at(10, 5, 1) + 150);
        assert!(decode_scaled(&bytes, header, (100, 75), &mut [0; 10]).is_err());
        assert!(features(b"RIFF\0\0\0\0WEBPVP8 ").is_none());
        // An EXIF chunk (its orientation is the full decode's to apply) sends it there.
        let mut tagged = bytes.clone();
        tagged.extend_from_slice(b"EXIF\x02\0\0\0ab");
        assert!(chunks(&tagged).any(|c| c == *b"EXIF") && features(&tagged).is_none());
        assert!(decode_scaled(&bytes[..bytes.len() / 2], header, (100, 75), &mut out).is_err());
    }
}
