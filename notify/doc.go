// Package notify sends SOS notifications by SMS and voice call (Twilio),
// email (SMTP) and signed webhooks, and renders their text in English and
// Filipino.
//
// The hub's dispatcher and an agent cut off from the hub both use it, so
// the package imports nothing from the hub. Every sender implements
// Sender: Send delivers one Message to one recipient and returns a Result
// or an error that says whether a retry can succeed.
//
// # Errors and retries
//
// A failed Send returns an *Error. Permanent errors (an invalid number, a
// recipient who replied STOP, an SMTP 5xx reply, a webhook 4xx reply) fail
// the same way on every retry. Transient errors (HTTP 429 and 5xx, SMTP 4xx
// replies, timeouts, refused connections) may succeed later: wait for
// RetryDelay and send again. An Error with Unknown set means the request
// may have reached the provider before it failed, so a retry can deliver a
// second copy. For SMS and voice, call Twilio.Find before sending again.
// Webhook receivers can drop the duplicate by the idempotency key header,
// and mail clients can drop it by its Message-ID.
//
// # Idempotency keys and references
//
// Message.Key names one notification, for example
// "incident-12/sms/+639171234567". Its reference, Reference(Key), is a
// short marker such as "XOT-7Q2M4K9D". Twilio.Send puts it into the text
// of each SMS that has a Key, so that Twilio.Find can later recognise the
// message among those sent to the same number. Templates print the same marker when
// AlertData.Ref is set. The webhook sender sends Key in the
// X-Xpress-Idempotency-Key header, and the SMTP sender derives the
// Message-ID from it.
//
// # Phone numbers
//
// NormalizePhone turns the ways Filipinos write numbers (0917 123 4567,
// +63 917 123 4567, 63917…) into E.164. Landlines such as +63 2 8123 4567
// are valid numbers and are accepted, but Twilio rejects an SMS to them
// with error 21614, which Send returns as a permanent error. IsMobilePhone
// tells the caller beforehand whether a number can receive SMS.
package notify
