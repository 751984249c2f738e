/*
 * test_edge_frame.c - checks edge_frame.h against the shared vectors (vectors/vectors.txt).
 *
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -fsanitize=address,undefined \
 *      -o test_edge_frame test_edge_frame.c && ./test_edge_frame ../vectors/vectors.txt
 *
 * For every valid vector: encoding its fields gives its wire bytes byte for byte (and a
 * buffer one byte short gives EF_ERR_CAPACITY); the chunk decoder and the streaming decoder
 * (fed one byte at a time, after garbage with and without a delimiter, followed by garbage)
 * give back its fields and payload. For every invalid vector: both decoders give its reason.
 * Plus the CRC check value, an oversize run with a small buffer, and encoder refusals.
 * Prints "checked N vectors (V valid, I invalid)"; exit status 0 when everything passed.
 *
 *   ./test_edge_frame --decode < chunks.txt
 *
 * Differential mode for tests/test_c_codec.py: each input line is one wire chunk in hex
 * (without the delimiter, "-" for none); each output line is "ok <fields> <payload hex>"
 * (fields as in vectors.txt) or "err <reason>". The streaming decoder must agree with the
 * chunk decoder on every line, or the line reads "mismatch".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_frame.h"

#define LINE_MAX_CHARS (1u << 20)
#define WIRE_CAP (EF_WIRE_SIZE_MAX(EF_MAX_PAYLOAD) + 64u)

static char line[LINE_MAX_CHARS];
static uint8_t payload[EF_MAX_PAYLOAD + 64u];
static uint8_t wire[WIRE_CAP];
static uint8_t out[WIRE_CAP];
static uint8_t raw[WIRE_CAP];
static uint8_t decoder_buf[EF_MAX_RAW];
static int failures;
static const char *current = "";

static void fail(const char *what) {
    failures++;
    fprintf(stderr, "FAIL %s: %s\n", current, what);
}

static void check(int ok, const char *what) {
    if (!ok) fail(what);
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Hex string (or "-") to bytes; the number of bytes, or -1 when malformed or too long. */
static long parse_hex(const char *s, uint8_t *dst, size_t cap) {
    size_t n = strlen(s), i;
    if (strcmp(s, "-") == 0) return 0;
    if (n % 2u != 0u || n / 2u > cap) return -1;
    for (i = 0; i < n / 2u; i++) {
        int hi = hex_digit(s[2u * i]), lo = hex_digit(s[2u * i + 1u]);
        if (hi < 0 || lo < 0) return -1;
        dst[i] = (uint8_t)(hi * 16 + lo);
    }
    return (long)(n / 2u);
}

static int reason_code(const char *name) {
    int err;
    for (err = EF_ERR_COBS; err >= EF_ERR_OVERSIZE; err--)
        if (strcmp(ef_reason_name(err), name) == 0) return err;
    return 0;
}

/* Whitespace-separated fields of line, in place; the number found. */
static int split(char *s, char **fields, int max) {
    int n = 0;
    char *tok = strtok(s, " \t\r\n");
    while (tok != NULL && n < max) {
        fields[n++] = tok;
        tok = strtok(NULL, " \t\r\n");
    }
    return n;
}

static int same_header(const ef_header *a, const ef_header *b) {
    return a->version == b->version && a->type == b->type && a->sensor_id == b->sensor_id &&
           a->n_channels == b->n_channels && a->sample_format == b->sample_format && a->n_samples == b->n_samples &&
           ef_float_bits(a->scale) == ef_float_bits(b->scale) &&
           ef_float_bits(a->sample_rate) == ef_float_bits(b->sample_rate) && a->seq == b->seq &&
           a->timestamp_us == b->timestamp_us;
}

/* Feeds bytes; returns the last non-NONE result (0 if none) and how many there were. */
static int feed_all(ef_decoder *d, const uint8_t *p, size_t n, int *events) {
    int last = EF_NONE;
    size_t i;
    for (i = 0; i < n; i++) {
        int r = ef_decoder_feed(d, p[i]);
        if (r != EF_NONE) {
            last = r;
            if (events != NULL) (*events)++;
        }
    }
    return last;
}

static int frame_matches(const ef_decoder *d, const ef_header *h, const uint8_t *pl, size_t plen) {
    return same_header(&d->header, h) && d->payload_len == plen && (plen == 0u || memcmp(d->payload, pl, plen) == 0);
}

static void check_valid(char **f) {
    ef_header h, got;
    const uint8_t *got_payload = NULL;
    size_t got_len = 0;
    long plen, wlen;
    int32_t n;
    int events = 0, r;
    ef_decoder d;
    /* garbage: a chunk that is not a frame (COBS block past the end) */
    static const uint8_t garbage[] = {0x13, 0x37, 0xFF, 0x05, 0x42};
    static const uint8_t zero = 0;

    h.version = (uint8_t)strtoul(f[2], NULL, 10);
    h.type = (uint8_t)strtoul(f[3], NULL, 10);
    h.sensor_id = (uint16_t)strtoul(f[4], NULL, 10);
    h.n_channels = (uint8_t)strtoul(f[5], NULL, 10);
    h.sample_format = (uint8_t)strtoul(f[6], NULL, 10);
    h.n_samples = (uint16_t)strtoul(f[7], NULL, 10);
    h.scale = ef_bits_float((uint32_t)strtoul(f[8], NULL, 16));
    h.sample_rate = ef_bits_float((uint32_t)strtoul(f[9], NULL, 16));
    h.seq = (uint32_t)strtoul(f[10], NULL, 10);
    h.timestamp_us = (uint64_t)strtoull(f[11], NULL, 10);
    plen = parse_hex(f[12], payload, sizeof payload);
    wlen = parse_hex(f[13], wire, sizeof wire);
    if (plen < 0 || wlen < 2) {
        fail("malformed vector line");
        return;
    }

    /* encode */
    n = ef_encode_frame(&h, payload, (size_t)plen, out, sizeof out);
    check(n == wlen && memcmp(out, wire, (size_t)wlen) == 0, "ef_encode_frame differs from the wire bytes");
    check(ef_encode_frame(&h, payload, (size_t)plen, out, (size_t)wlen) == wlen, "exact-size buffer refused");
    check(ef_encode_frame(&h, payload, (size_t)plen, out, (size_t)wlen - 1u) == EF_ERR_CAPACITY,
          "a buffer one byte short is not EF_ERR_CAPACITY");
    check((size_t)wlen <= EF_WIRE_SIZE_MAX((size_t)plen), "EF_WIRE_SIZE_MAX too small");
    n = ef_encode_raw(&h, payload, (size_t)plen, raw, sizeof raw);
    check(n == (int32_t)EF_RAW_SIZE((size_t)plen), "ef_encode_raw size");
    if (n > 0) {
        int32_t m = ef_cobs_encode(raw, (size_t)n, out, sizeof out);
        check(m == wlen - 1 && memcmp(out, wire, (size_t)m) == 0, "ef_cobs_encode(ef_encode_raw) differs");
        check(ef_crc32(raw, (size_t)n) == 0x2144DF1Cu, "CRC residue of a whole frame");
    }

    /* decode the chunk (COBS in place, then the raw frame) */
    memcpy(raw, wire, (size_t)wlen);
    n = ef_cobs_decode(raw, (size_t)wlen - 1u, raw, sizeof raw);
    check(n == (int32_t)EF_RAW_SIZE((size_t)plen), "ef_cobs_decode length");
    r = n > 0 ? ef_decode_raw(raw, (size_t)n, &got, &got_payload, &got_len) : n;
    check(r == EF_FRAME && same_header(&got, &h) && got_len == (size_t)plen &&
              (plen == 0 || memcmp(got_payload, payload, (size_t)plen) == 0),
          "ef_decode_raw fields differ");

    /* stream, one byte at a time: a clean start, then the last byte completes the frame */
    ef_decoder_init(&d, decoder_buf, sizeof decoder_buf);
    r = feed_all(&d, wire, (size_t)wlen - 1u, &events);
    check(r == EF_NONE && events == 0, "the decoder reported something before the delimiter");
    r = ef_decoder_feed(&d, 0);
    check(r == EF_FRAME && frame_matches(&d, &h, payload, (size_t)plen), "streamed frame differs");

    /* garbage 0x00 frame garbage 0x00: one error, the frame, one error */
    ef_decoder_init(&d, decoder_buf, sizeof decoder_buf);
    check(feed_all(&d, garbage, sizeof garbage, NULL) == EF_NONE, "garbage without delimiter reported");
    check(ef_decoder_feed(&d, 0) == EF_ERR_COBS, "garbage chunk is not EF_ERR_COBS");
    r = feed_all(&d, wire, (size_t)wlen, NULL);
    check(r == EF_FRAME && frame_matches(&d, &h, payload, (size_t)plen), "frame after garbage differs");
    feed_all(&d, garbage, sizeof garbage, NULL);
    check(ef_decoder_feed(&d, 0) == EF_ERR_COBS && ef_decoder_feed(&d, 0) == EF_NONE, "garbage after the frame");
    check(d.frames_ok == 1u && d.rejected[EF_REASON_INDEX(EF_ERR_COBS)] == 2u, "decoder counters");

    /* garbage joined to the front of a frame (no delimiter): that frame is lost, the
       decoder resynchronises at its 0x00 and the next frame decodes */
    ef_decoder_init(&d, decoder_buf, sizeof decoder_buf);
    events = 0;
    feed_all(&d, garbage, sizeof garbage, &events);
    r = feed_all(&d, wire, (size_t)wlen, &events);
    check(r < 0 && events == 1, "garbage + frame is not one error");
    r = feed_all(&d, &zero, 1u, NULL);
    check(r == EF_NONE, "a second 0x00 is not ignored");
    r = feed_all(&d, wire, (size_t)wlen, NULL);
    check(r == EF_FRAME && frame_matches(&d, &h, payload, (size_t)plen), "no resync after a corrupted frame");
}

static void check_invalid(char **f) {
    int expected = reason_code(f[2]);
    long wlen = parse_hex(f[3], wire, sizeof wire);
    int32_t n;
    int r, events = 0;
    ef_header h;
    const uint8_t *p = NULL;
    size_t plen = 0;
    ef_decoder d;
    if (expected == 0 || wlen < 1 || wire[wlen - 1] != 0u) {
        fail("malformed vector line");
        return;
    }
    n = ef_cobs_decode(wire, (size_t)wlen - 1u, raw, sizeof raw);
    r = n < 0 ? n : ef_decode_raw(raw, (size_t)n, &h, &p, &plen);
    check(r == expected, "chunk decoder gives another reason");
    if (r != expected) fprintf(stderr, "  got %s, expected %s\n", ef_reason_name(r), f[2]);
    ef_decoder_init(&d, decoder_buf, sizeof decoder_buf);
    r = feed_all(&d, wire, (size_t)wlen, &events);
    check(r == expected && events == 1 && d.rejected[EF_REASON_INDEX(expected)] == 1u && d.frames_ok == 0u,
          "streaming decoder gives another reason");
}

/* Checks that need no vector file. */
static int builtin_checks(void) {
    static const uint8_t check_input[] = "123456789";
    uint8_t small[64];
    uint8_t frame_wire[512];
    uint8_t ping_wire[64];
    uint8_t tok[4];
    ef_header h;
    ef_decoder d;
    int32_t big, ping;
    int r, events = 0;

    current = "builtin";
    check(ef_crc32(check_input, 9) == 0xCBF43926u, "CRC-32 check value of \"123456789\"");
    check(ef_crc32_update(ef_crc32(check_input, 4), check_input + 4, 5) == 0xCBF43926u, "CRC-32 in two parts");
    check(ef_crc32(check_input, 0) == 0u, "CRC-32 of nothing");

    memset(&h, 0, sizeof h);
    h.version = EF_VERSION;
    h.type = EF_SAMPLES;
    h.n_channels = 4;
    h.sample_format = EF_FMT_INT16;
    h.n_samples = 32;
    h.scale = 0.001f;
    h.sample_rate = 25600.0f;
    memset(payload, 0x5A, 256);
    big = ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire);
    check(big > 0, "encode 4 x 32 int16");
    check(ef_encode_frame(&h, payload, 255, frame_wire, sizeof frame_wire) == EF_ERR_LENGTH, "length mismatch");
    check(ef_encode_frame(&h, NULL, 256, frame_wire, sizeof frame_wire) == EF_ERR_LENGTH, "NULL payload");
    h.sample_rate = 0.0f;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) == EF_ERR_RATE, "zero rate");
    h.sample_rate = -0.0f;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) == EF_ERR_RATE, "-0 rate");
    h.sample_rate = 9999999.0f;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) > 0, "rate just under 1e7");
    h.sample_rate = 25600.0f;
    h.sample_format = 7;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) == EF_ERR_FORMAT, "format 7");
    h.sample_format = EF_FMT_INT16;
    h.version = 2;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) == EF_ERR_VERSION, "version 2");
    h.version = EF_VERSION;
    h.type = 0x42;
    check(ef_encode_frame(&h, payload, 256, frame_wire, sizeof frame_wire) == EF_ERR_TYPE, "type 0x42");
    h.type = EF_SAMPLES;
    check(ef_encode_frame(&h, payload, EF_MAX_PAYLOAD + 1u, frame_wire, sizeof frame_wire) == EF_ERR_OVERSIZE,
          "payload over EF_MAX_PAYLOAD");

    memset(&h, 0, sizeof h);
    h.version = EF_VERSION;
    h.type = EF_PING;
    h.scale = 1.0f;
    ef_put_u32le(tok, 0xDEADBEEFu);
    ping = ef_encode_frame(&h, tok, 4, ping_wire, sizeof ping_wire);
    check(ping > 0 && ef_get_u32le(tok) == 0xDEADBEEFu, "encode PING");
    check(ef_encode_frame(&h, tok, 3, ping_wire, sizeof ping_wire) == EF_ERR_LENGTH, "PING with a 3-byte token");

    /* A decoder whose buffer holds 64 bytes: the 4 x 32 frame is one OVERSIZE, the rest of it
       is skipped, and the PING after it decodes. */
    if (big > 0 && ping > 0) {
        ef_decoder_init(&d, small, sizeof small);
        r = feed_all(&d, frame_wire, (size_t)big, &events);
        check(r == EF_ERR_OVERSIZE && events == 1, "oversize frame is one EF_ERR_OVERSIZE");
        r = feed_all(&d, frame_wire, (size_t)big, &events); /* again, then the ping */
        r = feed_all(&d, ping_wire, (size_t)ping, &events);
        check(r == EF_FRAME && events == 3 && d.payload_len == 4u && ef_get_u32le(d.payload) == 0xDEADBEEFu,
              "PING after oversize frames");
        check(d.rejected[EF_REASON_INDEX(EF_ERR_OVERSIZE)] == 2u && d.frames_ok == 1u, "oversize counters");
        /* a partial frame, reset, then a whole one */
        feed_all(&d, ping_wire, 10, NULL);
        ef_decoder_reset(&d);
        check(feed_all(&d, ping_wire, (size_t)ping, NULL) == EF_FRAME, "frame after reset");
    }
    check(strcmp(ef_reason_name(EF_ERR_OVERSIZE), "oversize") == 0 && strcmp(ef_reason_name(1), "") == 0,
          "reason names");
    return failures == 0;
}

static int run_vectors(const char *path) {
    FILE *fp = fopen(path, "r");
    char *f[16];
    int n_valid = 0, n_invalid = 0;
    if (fp == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    while (fgets(line, sizeof line, fp) != NULL) {
        int nf;
        if (strchr(line, '\n') == NULL && !feof(fp)) {
            fprintf(stderr, "line longer than %u characters\n", LINE_MAX_CHARS);
            fclose(fp);
            return 1;
        }
        if (line[0] == '#' || line[0] == '\n') continue;
        nf = split(line, f, 16);
        if (nf < 2) continue;
        current = f[1];
        if (strcmp(f[0], "valid") == 0 && nf == 14) {
            check_valid(f);
            n_valid++;
        } else if (strcmp(f[0], "invalid") == 0 && nf == 4) {
            check_invalid(f);
            n_invalid++;
        } else {
            fail("unknown line");
        }
    }
    fclose(fp);
    builtin_checks();
    printf("checked %d vectors (%d valid, %d invalid), %d failures\n", n_valid + n_invalid, n_valid, n_invalid,
           failures);
    return failures == 0 ? 0 : 1;
}

static void print_hex(const uint8_t *p, size_t n) {
    size_t i;
    if (n == 0u) fputs("-", stdout);
    for (i = 0; i < n; i++) printf("%02x", p[i]);
}

/* Differential mode: one chunk per line on stdin, one verdict per line on stdout. */
static int run_decode(void) {
    ef_decoder d;
    ef_decoder_init(&d, decoder_buf, sizeof decoder_buf);
    while (fgets(line, sizeof line, stdin) != NULL) {
        char *f[2];
        long n;
        int32_t m;
        int r, rs;
        ef_header h;
        const uint8_t *p = NULL;
        size_t plen = 0;
        if (split(line, f, 2) < 1 || (n = parse_hex(f[0], wire, sizeof wire - 1u)) < 0) {
            puts("bad input");
            continue;
        }
        m = ef_cobs_decode(wire, (size_t)n, raw, sizeof raw);
        r = m < 0 ? m : ef_decode_raw(raw, (size_t)m, &h, &p, &plen);
        wire[n] = 0; /* the same chunk through the streaming decoder */
        rs = feed_all(&d, wire, (size_t)n + 1u, NULL);
        if (n > 0 && memchr(wire, 0, (size_t)n) != NULL) {
            rs = r; /* a 0x00 inside splits the chunk on a stream: not comparable */
            ef_decoder_reset(&d);
        }
        if (rs != r || (r == EF_FRAME && !frame_matches(&d, &h, p, plen))) {
            if (!(n == 0 && rs == EF_NONE)) { /* an empty chunk is an idle 0x00 on a stream */
                puts("mismatch");
                continue;
            }
        }
        if (r == EF_FRAME) {
            printf("ok %u %u %u %u %u %u %08" PRIx32 " %08" PRIx32 " %" PRIu32 " %" PRIu64 " ", h.version, h.type,
                   h.sensor_id, h.n_channels, h.sample_format, h.n_samples, ef_float_bits(h.scale),
                   ef_float_bits(h.sample_rate), h.seq, h.timestamp_us);
            print_hex(p, plen);
            putchar('\n');
        } else {
            printf("err %s\n", ef_reason_name(r));
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--decode") == 0) return run_decode();
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTORS.txt | --decode\n", argv[0]);
        return 2;
    }
    return run_vectors(argv[1]);
}
