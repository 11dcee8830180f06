package writebehind

// SetUnsafeNoToken makes Writers created afterwards send no idempotency
// token, the negative control of TestClientRetryAppliesOnce; it returns
// the function that restores the default.
func SetUnsafeNoToken() (restore func()) {
	unsafeNoToken.Store(true)
	return func() { unsafeNoToken.Store(false) }
}
