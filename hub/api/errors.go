package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/xpress-ops/tower/hub/store"
)

// badRequestError is an invalid request. Its message names the bad value
// and is shown to the client.
type badRequestError struct{ msg string }

func (e *badRequestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &badRequestError{msg: fmt.Sprintf(format, args...)}
}

// errorStatus maps an error kind to a status code and the plain message
// for the client. The detail goes only to the log.
func errorStatus(err error) (int, string) {
	var (
		bad        *badRequestError
		mediaType  *unsupportedMediaTypeError
		tooLarge   *http.MaxBytesError
		stateError *store.StateError
		forbidden  *forbiddenError
	)
	switch {
	case errors.As(err, &bad):
		return http.StatusBadRequest, bad.msg
	case errors.As(err, &forbidden):
		return http.StatusForbidden, forbidden.msg
	case errors.As(err, &mediaType):
		return http.StatusUnsupportedMediaType, mediaType.Error()
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit)
	case errors.As(err, &stateError):
		return http.StatusConflict, stateError.Error()
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, "conflict with the current state; reload and try again"
	case errors.Is(err, store.ErrInvalid):
		return http.StatusBadRequest, "invalid request"
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, "not found"
	case errors.Is(err, store.ErrUnavailable):
		return http.StatusServiceUnavailable, "store unavailable, try again shortly"
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "store timed out, try again shortly"
	default:
		return http.StatusInternalServerError, "internal error"
	}
}

// writeError sends err as a JSON error response and logs it: server-side
// failures at error level with the detail, client mistakes at info level.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := errorStatus(err)
	level := slog.LevelInfo
	switch {
	case code >= http.StatusInternalServerError:
		level = slog.LevelError
	case code == http.StatusNotFound:
		level = slog.LevelDebug
	}
	if r.Context().Err() != nil {
		// The client went away, so the failure is expected.
		level = slog.LevelDebug
	}
	s.log.Log(r.Context(), level, "request failed",
		"method", r.Method, "path", r.URL.Path, "status", code, "error", err)
	s.writeJSON(w, r, code, map[string]string{"error": msg})
}

// writeJSON sends v as the JSON body with status code. API responses are
// never cached.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode response", "method", r.Method, "path", r.URL.Path, "error", err)
		code = http.StatusInternalServerError
		body = []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if _, err := w.Write(append(body, '\n')); err != nil {
		s.log.Debug("write response", "method", r.Method, "path", r.URL.Path, "error", err)
	}
}
