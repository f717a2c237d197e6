package events

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"sync"
	"time"
)

// frameOverhead is the most a frame adds around its type and data: the
// keys and punctuation, a 20-digit seq and a 35-byte RFC 3339 time.
const frameOverhead = len(`{"type":"","seq":,"time":"","data":}`) + 20 + len(time.RFC3339Nano)

// maxPooledEncoderSize bounds the buffer an encoder keeps in the pool, so
// one large event does not pin its buffer for good.
const maxPooledEncoderSize = 64 << 10

// newEvent returns the event with its frame, the bytes json.Marshal
// returns for it. data must be JSON as json.Marshal writes it: compact,
// with <, > and & escaped. typ needs no escaping, which checkType ensures.
func newEvent(typ string, seq uint64, t time.Time, data []byte) *Event {
	frame := make([]byte, 0, frameOverhead+len(typ)+len(data))
	frame = append(frame, `{"type":"`...)
	frame = append(frame, typ...)
	frame = append(frame, `","seq":`...)
	frame = strconv.AppendUint(frame, seq, 10)
	frame = append(frame, `,"time":"`...)
	frame = t.AppendFormat(frame, time.RFC3339Nano)
	frame = append(frame, `","data":`...)
	start := len(frame)
	frame = append(frame, data...)
	end := len(frame)
	frame = append(frame, '}')
	// The full slice expression caps Data, so that an append to it cannot
	// overwrite the frame's closing brace.
	return &Event{Type: typ, Seq: seq, Time: t, Data: frame[start:end:end], frame: frame}
}

// encoder encodes event data into reused buffers.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
	// appended is the buffer of the data that encodes itself (jsonAppender).
	appended []byte
}

// jsonAppender is event data that appends its own JSON encoding, the
// bytes json.Marshal returns for it, without encoding/json's reflection.
// AppendJSON reports false, leaving dst as it was, for a value it cannot
// encode that way. encoding/json then encodes it, or returns the error.
// The hub publishes every fix, a store.StoredFix, so this is the common
// case.
type jsonAppender interface {
	AppendJSON(dst []byte) ([]byte, bool)
}

var encoders = sync.Pool{New: func() any {
	e := new(encoder)
	e.enc = json.NewEncoder(&e.buf)
	return e
}}

func getEncoder() *encoder { return encoders.Get().(*encoder) }

func putEncoder(e *encoder) {
	if e.buf.Cap() <= maxPooledEncoderSize && cap(e.appended) <= maxPooledEncoderSize {
		encoders.Put(e)
	}
}

// encode returns the JSON encoding of data, the bytes json.Marshal returns.
// They are valid until the encoder's next use.
func (e *encoder) encode(data any) ([]byte, error) {
	if a, ok := data.(jsonAppender); ok && !isNilPointer(data) {
		if out, ok := a.AppendJSON(e.appended[:0]); ok {
			e.appended = out
			return out, nil
		}
	}
	e.buf.Reset()
	if err := e.enc.Encode(data); err != nil {
		return nil, err
	}
	// Encode ends every value with a newline, which Marshal does not write.
	return bytes.TrimSuffix(e.buf.Bytes(), []byte("\n")), nil
}

// isNilPointer reports whether data is a nil pointer. A method with a
// value receiver panics when called through one, while json.Marshal
// encodes it as null.
func isNilPointer(data any) bool {
	v := reflect.ValueOf(data)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
