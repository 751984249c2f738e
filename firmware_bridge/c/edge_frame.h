/*
 * edge_frame.h - sensor wire protocol v1 (firmware_bridge/PROTOCOL.md) for MCU firmware.
 *
 * Header-only C99: no malloc, no stdio, no VLAs, no global state; only <stdint.h>,
 * <stddef.h> and <string.h> (memcpy for float <-> bit pattern). Multi-byte fields are
 * packed and unpacked byte by byte, little-endian, so the code runs unchanged on big-endian
 * cores and never makes an unaligned access. It assumes `float` is IEEE-754 binary32 (a
 * compile-time check refuses anything else). The same test vectors
 * (firmware_bridge/vectors/vectors.txt) pass here and in the Python codec
 * (edge_agent/protocol/frame.py); test_edge_frame.c checks them.
 *
 * A frame on the wire is COBS(header | payload | crc32) followed by one 0x00 byte.
 *
 * API (every function has the linkage EF_API, `static inline` unless defined before the
 * #include; define it empty in exactly one translation unit to get one external copy):
 *
 *   uint32_t ef_crc32(const uint8_t *data, size_t n)
 *   uint32_t ef_crc32_update(uint32_t crc, const uint8_t *data, size_t n)
 *       CRC-32/IEEE exactly as zlib's crc32(): start with 0 (or call ef_crc32), pass the
 *       previous result to continue. 16-entry nibble table, 64 bytes of const data.
 *   int32_t ef_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
 *       COBS of in[0..n) without the delimiter: bytes written, or EF_ERR_CAPACITY.
 *       EF_COBS_MAX(n) bytes are always enough. Output identical to Python's cobs.encode.
 *   int32_t ef_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
 *       The inverse (input without the delimiter): bytes written, EF_ERR_COBS for a
 *       malformed input (0x00 inside, a block running past the end), EF_ERR_OVERSIZE if the
 *       decoded bytes exceed cap. Output <= n bytes. May run in place (out == in).
 *   int  ef_check_header(const ef_header *h, size_t payload_len)
 *       The checks a receiver applies, in the receiver's order: EF_OK or the first error
 *       (OVERSIZE, VERSION, TYPE, FORMAT, LENGTH, RATE).
 *   int32_t ef_encode_raw(const ef_header *h, const uint8_t *payload, size_t payload_len,
 *                         uint8_t *out, size_t cap)
 *       header | payload | crc32 (no COBS: what an MQTT message carries). Bytes written,
 *       a check error from ef_check_header, or EF_ERR_CAPACITY. EF_RAW_SIZE(payload_len).
 *   int32_t ef_encode_frame(const ef_header *h, const uint8_t *payload, size_t payload_len,
 *                           uint8_t *out, size_t cap)
 *       COBS(header | payload | crc32) then 0x00, ready for the UART: bytes written
 *       (including the delimiter) or a negative error as ef_encode_raw. The payload is read
 *       in place; no intermediate copy. EF_WIRE_SIZE_MAX(payload_len) bytes are enough.
 *   int  ef_decode_raw(const uint8_t *raw, size_t n, ef_header *h,
 *                      const uint8_t **payload, size_t *payload_len)
 *       Check and parse header | payload | crc32: EF_FRAME (h and *payload set, *payload
 *       points into raw) or an error: SHORT, OVERSIZE, CRC, then as ef_check_header.
 *   void ef_decoder_init(ef_decoder *d, uint8_t *buf, size_t cap)
 *   int  ef_decoder_feed(ef_decoder *d, uint8_t byte)
 *       Streaming decoder: feed every received byte (e.g. from the UART ISR's ring buffer).
 *       Returns EF_NONE (nothing yet), EF_FRAME (d->header, d->payload, d->payload_len are
 *       valid until the next call) or a negative error for the frame that just ended. The
 *       COBS decoding happens byte by byte into buf, so cap = EF_RAW_SIZE(largest payload
 *       you accept); a longer frame gives EF_ERR_OVERSIZE once and is skipped up to the
 *       next 0x00. Every 0x00 is a fresh start (resynchronisation); consecutive 0x00 bytes
 *       are ignored. d->frames_ok and d->rejected[EF_REASON_INDEX(err)] count the outcomes.
 *   void ef_decoder_reset(ef_decoder *d)
 *       Forget a partial frame (after a reconnect or a UART overrun).
 *   const char *ef_reason_name(int err)
 *       "cobs", "short", ... (the Python REASONS names) for a negative error, else "".
 *   void ef_put_u16le / ef_put_u32le / ef_put_u64le (uint8_t *p, value)
 *   uint16_t ef_get_u16le / uint32_t ef_get_u32le / uint64_t ef_get_u64le (const uint8_t *p)
 *       Little-endian helpers, e.g. for the PING/PONG token and the ACK fields.
 *
 * Errors (negative, the same meanings as Python's frame.REASONS in the same order):
 *   EF_ERR_COBS -1, EF_ERR_SHORT -2, EF_ERR_CRC -3, EF_ERR_VERSION -4, EF_ERR_TYPE -5,
 *   EF_ERR_FORMAT -6, EF_ERR_LENGTH -7, EF_ERR_RATE -8, EF_ERR_OVERSIZE -9,
 *   and for encoders only EF_ERR_CAPACITY -10 (output buffer too small).
 */
#ifndef EDGE_FRAME_H
#define EDGE_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef EF_API
#define EF_API static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define EF_VERSION 1u
#define EF_HEADER_SIZE 28u
#define EF_CRC_SIZE 4u
#define EF_MAX_PAYLOAD 65536u /* bytes; larger frames are refused (EF_ERR_OVERSIZE) */
#define EF_RAW_SIZE(payload_len) (EF_HEADER_SIZE + (payload_len) + EF_CRC_SIZE)
#define EF_MAX_RAW EF_RAW_SIZE(EF_MAX_PAYLOAD)
/* COBS output for n input bytes is at most n + ceil(n / 254), and 1 for n = 0. */
#define EF_COBS_MAX(n) ((n) + ((n) + 253u) / 254u + ((n) == 0u))
/* Bytes on the wire for a frame with payload_len payload bytes, delimiter included. */
#define EF_WIRE_SIZE_MAX(payload_len) (EF_COBS_MAX(EF_RAW_SIZE(payload_len)) + 1u)
/* Sample rates must satisfy 0 < rate < 1e7 Hz; 0x4B189680 is the bit pattern of 1e7f. */
#define EF_MAX_RATE_BITS 0x4B189680u

/* Message types (header byte 1). */
enum {
    EF_SAMPLES = 0x01,     /* MCU -> gateway: vibration samples, physical unit g */
    EF_SPEED = 0x02,       /* MCU -> gateway: shaft speed samples, rpm */
    EF_TEMPERATURE = 0x03, /* MCU -> gateway: temperature samples, degC */
    EF_PONG = 0x10,        /* MCU -> gateway: payload = the PING's u32 token */
    EF_ACK = 0x11,         /* MCU -> gateway: payload = u8 command type, u8 status (0 = ok) */
    EF_PING = 0x81,        /* gateway -> MCU: payload = u32 token */
    EF_START = 0x82,       /* gateway -> MCU: start streaming */
    EF_STOP = 0x83,        /* gateway -> MCU: stop streaming */
    EF_SET_RATE = 0x84,    /* gateway -> MCU: header sample_rate = the requested rate */
    EF_TIME_SYNC = 0x85    /* gateway -> MCU: header timestamp_us = gateway time */
};

/* Sample formats (header byte 5). Frames without samples carry EF_FMT_NONE. */
enum { EF_FMT_NONE = 0, EF_FMT_INT16 = 1, EF_FMT_INT32 = 2, EF_FMT_FLOAT32 = 3 };

/* Results. */
enum {
    EF_OK = 0,
    EF_NONE = 0,  /* ef_decoder_feed: no frame ended with this byte */
    EF_FRAME = 1, /* a good frame */
    EF_ERR_COBS = -1,
    EF_ERR_SHORT = -2,
    EF_ERR_CRC = -3,
    EF_ERR_VERSION = -4,
    EF_ERR_TYPE = -5,
    EF_ERR_FORMAT = -6,
    EF_ERR_LENGTH = -7,
    EF_ERR_RATE = -8,
    EF_ERR_OVERSIZE = -9,
    EF_ERR_CAPACITY = -10
};
#define EF_N_REASONS 9
#define EF_REASON_INDEX(err) (-(err)-1) /* EF_ERR_COBS -> 0 ... EF_ERR_OVERSIZE -> 8 */

/* The 28-byte header, decoded. On the wire: offsets 0,1,2,4,5,6,8,12,16,20, little-endian. */
typedef struct ef_header {
    uint8_t version;       /* EF_VERSION */
    uint8_t type;          /* EF_SAMPLES ... */
    uint16_t sensor_id;    /* which sensor MCU */
    uint8_t n_channels;    /* channels interleaved in the payload (0 without samples) */
    uint8_t sample_format; /* EF_FMT_* */
    uint16_t n_samples;    /* samples per channel in this frame */
    float scale;           /* physical value = raw * scale */
    float sample_rate;     /* Hz */
    uint32_t seq;          /* +1 per frame per (sensor_id, type), wraps at 2^32 */
    uint64_t timestamp_us; /* time of the first sample, microseconds */
} ef_header;

/* Streaming decoder state; all fields may be read, none written (use the functions). */
typedef struct ef_decoder {
    uint8_t *buf;         /* caller's buffer: the decoded frame being assembled */
    size_t cap;           /* its size: EF_RAW_SIZE(largest accepted payload) */
    size_t len;           /* decoded bytes so far */
    uint8_t code;         /* code byte of the current COBS block, 0 = no block started */
    uint8_t block_left;   /* data bytes still expected in the current block */
    uint8_t skipping;     /* 1 inside an oversize run: drop bytes up to the next 0x00 */
    ef_header header;     /* after EF_FRAME */
    const uint8_t *payload;
    size_t payload_len;
    uint32_t frames_ok;
    uint32_t rejected[EF_N_REASONS]; /* by EF_REASON_INDEX(error) */
} ef_decoder;

/* float must be IEEE-754 binary32: the scale and rate fields are copied bit for bit. */
typedef char ef_float_must_be_32_bits[(sizeof(float) == 4u) ? 1 : -1];

/* ---- declarations (the implementation follows) ------------------------------------ */

EF_API uint32_t ef_crc32(const uint8_t *data, size_t n);
EF_API uint32_t ef_crc32_update(uint32_t crc, const uint8_t *data, size_t n);
EF_API int32_t ef_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);
EF_API int32_t ef_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);
EF_API int ef_check_header(const ef_header *h, size_t payload_len);
EF_API int32_t ef_encode_raw(const ef_header *h, const uint8_t *payload, size_t payload_len, uint8_t *out,
                             size_t cap);
EF_API int32_t ef_encode_frame(const ef_header *h, const uint8_t *payload, size_t payload_len, uint8_t *out,
                               size_t cap);
EF_API int ef_decode_raw(const uint8_t *raw, size_t n, ef_header *h, const uint8_t **payload, size_t *payload_len);
EF_API void ef_decoder_init(ef_decoder *d, uint8_t *buf, size_t cap);
EF_API int ef_decoder_feed(ef_decoder *d, uint8_t byte);
EF_API void ef_decoder_reset(ef_decoder *d);
EF_API const char *ef_reason_name(int err);
EF_API void ef_header_pack(const ef_header *h, uint8_t out[EF_HEADER_SIZE]);
EF_API void ef_header_unpack(const uint8_t in[EF_HEADER_SIZE], ef_header *h);
EF_API size_t ef_sample_size(uint8_t sample_format);
EF_API int ef_rate_ok(float rate);
EF_API int ef_scale_ok(float scale);
EF_API void ef_put_u16le(uint8_t *p, uint16_t v);
EF_API void ef_put_u32le(uint8_t *p, uint32_t v);
EF_API void ef_put_u64le(uint8_t *p, uint64_t v);
EF_API uint16_t ef_get_u16le(const uint8_t *p);
EF_API uint32_t ef_get_u32le(const uint8_t *p);
EF_API uint64_t ef_get_u64le(const uint8_t *p);
EF_API uint32_t ef_float_bits(float f);
EF_API float ef_bits_float(uint32_t u);

/* Internals (the ef_cobs_writer_* and ef_decoder_put/count functions below) are not API. */

/* ---- little-endian helpers --------------------------------------------------------- */

EF_API void ef_put_u16le(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

EF_API void ef_put_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

EF_API void ef_put_u64le(uint8_t *p, uint64_t v) {
    ef_put_u32le(p, (uint32_t)(v & 0xFFFFFFFFu));
    ef_put_u32le(p + 4, (uint32_t)(v >> 32));
}

EF_API uint16_t ef_get_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

EF_API uint32_t ef_get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

EF_API uint64_t ef_get_u64le(const uint8_t *p) {
    return (uint64_t)ef_get_u32le(p) | ((uint64_t)ef_get_u32le(p + 4) << 32);
}

EF_API uint32_t ef_float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

EF_API float ef_bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

EF_API const char *ef_reason_name(int err) {
    static const char *const names[EF_N_REASONS + 1] = {
        "cobs", "short", "crc", "version", "type", "format", "length", "rate", "oversize", "capacity"};
    if (err < 0 && err >= EF_ERR_CAPACITY) return names[EF_REASON_INDEX(err)];
    return "";
}

/* ---- CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320, init/xorout 0xFFFFFFFF) -------- */

EF_API uint32_t ef_crc32_update(uint32_t crc, const uint8_t *data, size_t n) {
    /* CRC of each 4-bit value: two table steps per byte. */
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
        0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    size_t i;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ nibble[crc & 0x0Fu];
    }
    return ~crc;
}

EF_API uint32_t ef_crc32(const uint8_t *data, size_t n) { return ef_crc32_update(0u, data, n); }

/* ---- COBS ----------------------------------------------------------------------------- */

/* Incremental COBS writer. A block is opened lazily (only when a byte needs it), so a final
 * run of exactly 254 non-zero bytes ends with its 0xFF block and no extra 0x01, as in
 * Python's cobs.encode. */
typedef struct ef_cobs_writer {
    uint8_t *out;
    size_t cap;
    size_t len;
    size_t code_pos;
    uint8_t code;
    uint8_t open;
    uint8_t overflow;
} ef_cobs_writer;

EF_API void ef_cobs_writer_open_block(ef_cobs_writer *w);
EF_API void ef_cobs_writer_close_block(ef_cobs_writer *w);
EF_API void ef_cobs_writer_init(ef_cobs_writer *w, uint8_t *out, size_t cap);
EF_API void ef_cobs_writer_put(ef_cobs_writer *w, const uint8_t *in, size_t n);
EF_API int32_t ef_cobs_writer_finish(ef_cobs_writer *w);

EF_API void ef_cobs_writer_open_block(ef_cobs_writer *w) {
    if (w->len >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->code_pos = w->len++;
    w->code = 1;
    w->open = 1;
}

EF_API void ef_cobs_writer_close_block(ef_cobs_writer *w) {
    w->out[w->code_pos] = w->code;
    w->open = 0;
}

EF_API void ef_cobs_writer_init(ef_cobs_writer *w, uint8_t *out, size_t cap) {
    w->out = out;
    w->cap = cap;
    w->len = 0;
    w->code_pos = 0;
    w->code = 0;
    w->open = 0;
    w->overflow = 0;
    ef_cobs_writer_open_block(w);
}

EF_API void ef_cobs_writer_put(ef_cobs_writer *w, const uint8_t *in, size_t n) {
    size_t i;
    for (i = 0; i < n && !w->overflow; i++) {
        if (!w->open) {
            ef_cobs_writer_open_block(w);
            if (w->overflow) return;
        }
        if (in[i] == 0u) {
            ef_cobs_writer_close_block(w);
            ef_cobs_writer_open_block(w);
        } else {
            if (w->len >= w->cap) {
                w->overflow = 1;
                return;
            }
            w->out[w->len++] = in[i];
            if (++w->code == 0xFFu) ef_cobs_writer_close_block(w);
        }
    }
}

/* Closes the last block; returns the bytes written or EF_ERR_CAPACITY. */
EF_API int32_t ef_cobs_writer_finish(ef_cobs_writer *w) {
    if (w->overflow) return EF_ERR_CAPACITY;
#if SIZE_MAX > 0x7FFFFFFFu /* only where size_t can exceed the int32_t result */
    if (w->len > 0x7FFFFFFFu) return EF_ERR_CAPACITY;
#endif
    if (w->open) ef_cobs_writer_close_block(w);
    return (int32_t)w->len;
}

EF_API int32_t ef_cobs_encode(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    ef_cobs_writer w;
    ef_cobs_writer_init(&w, out, cap);
    ef_cobs_writer_put(&w, in, n);
    return ef_cobs_writer_finish(&w);
}

EF_API int32_t ef_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    size_t i = 0, len = 0;
#if SIZE_MAX > 0x7FFFFFFFu
    if (n > 0x7FFFFFFFu) return EF_ERR_OVERSIZE;
#endif
    while (i < n) {
        uint8_t code = in[i++];
        size_t k;
        if (code == 0u) return EF_ERR_COBS;
        if ((size_t)(code - 1u) > n - i) return EF_ERR_COBS; /* block runs past the end */
        for (k = 1; k < code; k++) {
            uint8_t b = in[i++];
            if (b == 0u) return EF_ERR_COBS;
            if (len >= cap) return EF_ERR_OVERSIZE;
            out[len++] = b; /* len < i always: safe in place */
        }
        if (i < n && code != 0xFFu) {
            if (len >= cap) return EF_ERR_OVERSIZE;
            out[len++] = 0u;
        }
    }
    return (int32_t)len;
}

/* ---- header, checks, encoding ----------------------------------------------------- */

EF_API void ef_header_pack(const ef_header *h, uint8_t out[EF_HEADER_SIZE]) {
    out[0] = h->version;
    out[1] = h->type;
    ef_put_u16le(out + 2, h->sensor_id);
    out[4] = h->n_channels;
    out[5] = h->sample_format;
    ef_put_u16le(out + 6, h->n_samples);
    ef_put_u32le(out + 8, ef_float_bits(h->scale));
    ef_put_u32le(out + 12, ef_float_bits(h->sample_rate));
    ef_put_u32le(out + 16, h->seq);
    ef_put_u64le(out + 20, h->timestamp_us);
}

EF_API void ef_header_unpack(const uint8_t in[EF_HEADER_SIZE], ef_header *h) {
    h->version = in[0];
    h->type = in[1];
    h->sensor_id = ef_get_u16le(in + 2);
    h->n_channels = in[4];
    h->sample_format = in[5];
    h->n_samples = ef_get_u16le(in + 6);
    h->scale = ef_bits_float(ef_get_u32le(in + 8));
    h->sample_rate = ef_bits_float(ef_get_u32le(in + 12));
    h->seq = ef_get_u32le(in + 16);
    h->timestamp_us = ef_get_u64le(in + 20);
}

/* Bytes per sample of a format, 0 for an unknown one. */
EF_API size_t ef_sample_size(uint8_t sample_format) {
    switch (sample_format) {
    case EF_FMT_INT16: return 2u;
    case EF_FMT_INT32: return 4u;
    case EF_FMT_FLOAT32: return 4u;
    default: return 0u;
    }
}

/* 0 < rate < 1e7, judged on the bit pattern: positive finite binary32 values order like
 * their bits, and the sign bit, infinities and NaNs all fall outside (immune to -ffast-math). */
EF_API int ef_rate_ok(float rate) {
    uint32_t bits = ef_float_bits(rate);
    return bits > 0u && bits < EF_MAX_RATE_BITS;
}

/* A sample frame's scale is finite and non-zero, judged on the bit pattern as ef_rate_ok. */
EF_API int ef_scale_ok(float scale) {
    uint32_t bits = ef_float_bits(scale);
    return (bits & 0x7F800000u) != 0x7F800000u && (bits & 0x7FFFFFFFu) != 0u;
}

EF_API int ef_check_header(const ef_header *h, size_t payload_len) {
    if (payload_len > EF_MAX_PAYLOAD) return EF_ERR_OVERSIZE;
    if (h->version != EF_VERSION) return EF_ERR_VERSION;
    switch (h->type) {
    case EF_SAMPLES:
    case EF_SPEED:
    case EF_TEMPERATURE: {
        /* 32-bit product: up to 255 x 65535 x 4, more than a 16-bit size_t holds; payload_len
           is at most EF_MAX_PAYLOAD here, so its conversion is exact. */
        uint32_t size = (uint32_t)ef_sample_size(h->sample_format);
        if (size == 0u || !ef_scale_ok(h->scale)) return EF_ERR_FORMAT;
        if (h->n_channels == 0u || h->n_samples == 0u ||
            (uint32_t)payload_len != (uint32_t)h->n_channels * (uint32_t)h->n_samples * size)
            return EF_ERR_LENGTH;
        return ef_rate_ok(h->sample_rate) ? EF_OK : EF_ERR_RATE;
    }
    case EF_PING:
    case EF_PONG: return payload_len == 4u ? EF_OK : EF_ERR_LENGTH;
    case EF_ACK: return payload_len == 2u ? EF_OK : EF_ERR_LENGTH;
    case EF_START:
    case EF_STOP:
    case EF_TIME_SYNC: return payload_len == 0u ? EF_OK : EF_ERR_LENGTH;
    case EF_SET_RATE:
        if (payload_len != 0u) return EF_ERR_LENGTH;
        return ef_rate_ok(h->sample_rate) ? EF_OK : EF_ERR_RATE;
    default: return EF_ERR_TYPE;
    }
}

EF_API int32_t ef_encode_raw(const ef_header *h, const uint8_t *payload, size_t payload_len, uint8_t *out,
                             size_t cap) {
    uint32_t crc;
    int err = ef_check_header(h, payload_len);
    if (err != EF_OK) return err;
    if (payload_len > 0u && payload == NULL) return EF_ERR_LENGTH;
    if (cap < EF_RAW_SIZE(payload_len)) return EF_ERR_CAPACITY;
    ef_header_pack(h, out);
    if (payload_len > 0u) memcpy(out + EF_HEADER_SIZE, payload, payload_len);
    crc = ef_crc32(out, EF_HEADER_SIZE + payload_len);
    ef_put_u32le(out + EF_HEADER_SIZE + payload_len, crc);
    return (int32_t)EF_RAW_SIZE(payload_len);
}

EF_API int32_t ef_encode_frame(const ef_header *h, const uint8_t *payload, size_t payload_len, uint8_t *out,
                               size_t cap) {
    uint8_t head[EF_HEADER_SIZE];
    uint8_t crc_bytes[EF_CRC_SIZE];
    uint32_t crc;
    int32_t n;
    ef_cobs_writer w;
    int err = ef_check_header(h, payload_len);
    if (err != EF_OK) return err;
    if (payload_len > 0u && payload == NULL) return EF_ERR_LENGTH;
    ef_header_pack(h, head);
    crc = ef_crc32_update(ef_crc32(head, EF_HEADER_SIZE), payload, payload_len);
    ef_put_u32le(crc_bytes, crc);
    ef_cobs_writer_init(&w, out, cap);
    ef_cobs_writer_put(&w, head, EF_HEADER_SIZE);
    if (payload_len > 0u) ef_cobs_writer_put(&w, payload, payload_len);
    ef_cobs_writer_put(&w, crc_bytes, EF_CRC_SIZE);
    n = ef_cobs_writer_finish(&w);
    if (n < 0) return n;
    if ((size_t)n >= cap) return EF_ERR_CAPACITY;
    out[n] = 0u;
    return n + 1;
}

/* ---- decoding ------------------------------------------------------------------------ */

EF_API int ef_decode_raw(const uint8_t *raw, size_t n, ef_header *h, const uint8_t **payload, size_t *payload_len) {
    size_t body;
    int err;
    if (n < EF_HEADER_SIZE + EF_CRC_SIZE) return EF_ERR_SHORT;
    if (n > EF_MAX_RAW) return EF_ERR_OVERSIZE;
    body = n - EF_CRC_SIZE;
    if (ef_crc32(raw, body) != ef_get_u32le(raw + body)) return EF_ERR_CRC;
    ef_header_unpack(raw, h);
    err = ef_check_header(h, body - EF_HEADER_SIZE);
    if (err != EF_OK) return err;
    *payload = raw + EF_HEADER_SIZE;
    *payload_len = body - EF_HEADER_SIZE;
    return EF_FRAME;
}

EF_API void ef_decoder_reset(ef_decoder *d) {
    d->len = 0;
    d->code = 0;
    d->block_left = 0;
    d->skipping = 0;
}

EF_API void ef_decoder_init(ef_decoder *d, uint8_t *buf, size_t cap) {
    size_t i;
    d->buf = buf;
    d->cap = cap;
    d->payload = NULL;
    d->payload_len = 0;
    memset(&d->header, 0, sizeof d->header);
    d->frames_ok = 0;
    for (i = 0; i < EF_N_REASONS; i++) d->rejected[i] = 0;
    ef_decoder_reset(d);
}

EF_API int ef_decoder_count(ef_decoder *d, int result);
EF_API int ef_decoder_put(ef_decoder *d, uint8_t b);

EF_API int ef_decoder_count(ef_decoder *d, int result) {
    if (result == EF_FRAME)
        d->frames_ok++;
    else if (result < 0 && result >= EF_ERR_OVERSIZE)
        d->rejected[EF_REASON_INDEX(result)]++;
    return result;
}

/* Appends one decoded byte; EF_ERR_OVERSIZE (counted, skipping from here on) if full. */
EF_API int ef_decoder_put(ef_decoder *d, uint8_t b) {
    if (d->len >= d->cap) {
        ef_decoder_reset(d);
        d->skipping = 1;
        return ef_decoder_count(d, EF_ERR_OVERSIZE);
    }
    d->buf[d->len++] = b;
    return EF_NONE;
}

EF_API int ef_decoder_feed(ef_decoder *d, uint8_t byte) {
    int result;
    d->payload = NULL;
    d->payload_len = 0;
    if (byte == 0u) { /* delimiter: the end of a frame, and a fresh start */
        if (d->skipping || d->code == 0u) {
            ef_decoder_reset(d); /* end of an oversize run (already counted), or an idle 0x00 */
            return EF_NONE;
        }
        if (d->block_left != 0u)
            result = EF_ERR_COBS; /* the last block ran past the end */
        else
            result = ef_decode_raw(d->buf, d->len, &d->header, &d->payload, &d->payload_len);
        ef_decoder_reset(d);
        return ef_decoder_count(d, result);
    }
    if (d->skipping) return EF_NONE;
    if (d->block_left == 0u) { /* a code byte: the previous block, if any, ended with a 0x00 */
        if (d->code != 0u && d->code != 0xFFu && (result = ef_decoder_put(d, 0u)) != EF_NONE) return result;
        d->code = byte;
        d->block_left = (uint8_t)(byte - 1u);
        return EF_NONE;
    }
    d->block_left--;
    return ef_decoder_put(d, byte);
}

#ifdef __cplusplus
}
#endif

#endif /* EDGE_FRAME_H */
