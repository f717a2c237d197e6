package dispatch

import (
	"context"
	"log/slog"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// ContactLister reads contacts; store.Store implements it.
type ContactLister interface {
	Contacts(ctx context.Context, f store.ContactFilter) ([]store.Contact, error)
}

// DriverLanguage returns a function that reads the language of a
// vehicle's driver from the store's driver contacts, for the messages
// sent back to the vehicle (downlink.Config.Language). It returns the
// language of the most recently updated driver contact of the vehicle,
// and English when there is none or the store fails, which it logs.
func DriverLanguage(s ContactLister, log *slog.Logger) func(ctx context.Context, vehicleID string) string {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, vehicleID string) string {
		if vehicleID == "" {
			return string(store.LangEnglish)
		}
		drivers, err := s.Contacts(ctx, store.ContactFilter{Role: store.RoleDriver, VehicleID: vehicleID})
		if err != nil {
			log.Warn("reading the driver's language failed; using English", "vehicle", vehicleID, "error", err)
			return string(store.LangEnglish)
		}
		var newest *store.Contact
		for i := range drivers {
			if newest == nil || drivers[i].UpdatedAt.After(newest.UpdatedAt) {
				newest = &drivers[i]
			}
		}
		if newest == nil || !newest.Language.Valid() {
			return string(store.LangEnglish)
		}
		return string(newest.Language)
	}
}

// DriverMessage returns the text a driver reads when the SOS reaches a
// vehicle state (protocol.SOSState*), in lang ("en" or "fil"), for
// downlink.Config.Message. A state notify has no text for falls back to
// protocol.DefaultSOSStateMessage.
func DriverMessage(lang, state string) string {
	if text := notify.DriverStateMessage(notify.ParseLanguage(lang), state); text != "" {
		return text
	}
	return protocol.DefaultSOSStateMessage(state)
}
