package api

// EndSessionStreams lets the external tests call endSessionStreams.
func (s *Server) EndSessionStreams(sessionID string) { s.endSessionStreams(sessionID) }

// EndOperatorStreams lets the external tests call endOperatorStreams.
func (s *Server) EndOperatorStreams(operator string) { s.endOperatorStreams(operator) }

// EndTokenStreams lets the external tests call endTokenStreams.
func (s *Server) EndTokenStreams(tokenID int64) { s.endTokenStreams(tokenID) }
