package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	grantType    = "urn:ietf:params:oauth:grant-type:token-exchange"
	jwtTokenType = "urn:ietf:params:oauth:token-type:jwt"
	// maxResponse bounds what is read of a discovery document or a token response (a few
	// hundred bytes each): a larger answer is refused, not buffered.
	maxResponse = 256 << 10
)

// configError is a setting that is wrong (exit status 2), such as a gateway whose discovery
// document names a token endpoint somewhere else.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

// newHTTPClient is the client for discovery and the exchange. It never follows a redirect (the
// default client would re-send the POST, subject token and all, wherever a Location header
// points): a 3xx comes back as the response, and is refused. Timeout bounds each request as a
// whole, the body included.
func newHTTPClient(tc *tls.Config) *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: tc},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// readBody reads at most maxResponse bytes of a response; redirects and larger bodies are errors.
func readBody(what string, resp *http.Response) ([]byte, error) {
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, fmt.Errorf("%s: HTTP %d, a redirect to %q: redirects are not followed", what, resp.StatusCode,
			resp.Header.Get("Location"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%s: HTTP %d, unreadable body: %w", what, resp.StatusCode, err)
	}
	if len(body) > maxResponse {
		return nil, fmt.Errorf("%s: HTTP %d, a response larger than %d KiB", what, resp.StatusCode, maxResponse>>10)
	}
	return body, nil
}

// checkTokenEndpoint accepts a discovered token endpoint only on the gateway's own origin
// (https, same host and port as FLOWGATE_URL): the subject token goes nowhere else.
func checkTokenEndpoint(gateway, endpoint string) error {
	g, err := url.Parse(gateway)
	if err != nil {
		return &configError{fmt.Sprintf("FLOWGATE_URL %q: %v", gateway, err)}
	}
	e, err := url.Parse(endpoint)
	if err != nil || e.Scheme != "https" || e.User != nil || e.Host == "" ||
		!strings.EqualFold(e.Hostname(), g.Hostname()) || port(e) != port(g) {
		return &configError{fmt.Sprintf("the discovery document at %s names token_endpoint %q, which is not on "+
			"FLOWGATE_URL's https origin (scheme, host and port): the subject token is sent to the gateway only",
			gateway, endpoint)}
	}
	return nil
}

// port is a URL's port, 443 when it has none (both URLs are https).
func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	return "443"
}

// exchangeError is a refusal from the token endpoint (an OAuth error) or a transport failure.
type exchangeError struct {
	oauthError string // "invalid_grant", ...; empty for transport failures
	msg        string
}

func (e *exchangeError) Error() string { return e.msg }

// credentials holds the current flowgate credential and renews it.
type credentials struct {
	endpoint string
	scope    string
	http     *http.Client

	mu        sync.RWMutex
	token     string
	expiresAt time.Time
}

// discover reads the token endpoint from flowgate's OIDC discovery document, and accepts it only
// on the gateway's own origin.
func discover(ctx context.Context, hc *http.Client, gateway string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gateway+"/.well-known/openid-configuration", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("gateway unreachable: %w", err)
	}
	defer resp.Body.Close()
	what := "discovery at " + gateway
	body, err := readBody(what, resp)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %d (is [mint] configured on the gateway?)", what, resp.StatusCode)
	}
	var doc struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if doc.TokenEndpoint == "" {
		return "", fmt.Errorf("%s: no token_endpoint", what)
	}
	if err := checkTokenEndpoint(gateway, doc.TokenEndpoint); err != nil {
		return "", err
	}
	return doc.TokenEndpoint, nil
}

// exchange trades a subject token (a CI/workload OIDC token, or a still-valid flowgate
// credential) for a fresh credential with the worker's scope (RFC 8693).
func (c *credentials) exchange(ctx context.Context, subjectToken string) error {
	form := url.Values{
		"grant_type":         {grantType},
		"subject_token":      {subjectToken},
		"subject_token_type": {jwtTokenType},
		"scope":              {c.scope},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	sent := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return &exchangeError{msg: "token endpoint unreachable: " + err.Error()}
	}
	defer resp.Body.Close()
	raw, err := readBody("token endpoint", resp)
	if err != nil {
		return &exchangeError{msg: err.Error()}
	}
	var body struct {
		AccessToken      string `json:"access_token"`
		ExpiresIn        int64  `json:"expires_in"`
		TokenType        string `json:"token_type"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return &exchangeError{msg: fmt.Sprintf("token endpoint: HTTP %d, unreadable body: %v", resp.StatusCode, err)}
	}
	if resp.StatusCode != http.StatusOK {
		return &exchangeError{oauthError: body.Error, msg: fmt.Sprintf(
			"token exchange refused (HTTP %d): %s: %s", resp.StatusCode, body.Error, body.ErrorDescription)}
	}
	if !strings.EqualFold(body.TokenType, "bearer") || body.AccessToken == "" || body.ExpiresIn <= 0 {
		return &exchangeError{msg: "token endpoint: unexpected response (no Bearer access_token with a positive expires_in)"}
	}
	c.mu.Lock()
	c.token = body.AccessToken
	// Counted from when the request was sent: never later than the server's clock.
	c.expiresAt = sent.Add(time.Duration(body.ExpiresIn) * time.Second)
	c.mu.Unlock()
	return nil
}

// current is the callback for client.NewAPIKeyDynamicCredentials: called on every request.
func (c *credentials) current(context.Context) (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if time.Now().After(c.expiresAt) {
		return "", errors.New("flowgate credential expired")
	}
	return c.token, nil
}

func (c *credentials) snapshot() (string, time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.token, c.expiresAt
}

// subjectToken is the token the worker starts from: a Kubernetes projected service-account
// token (re-read from its file, which the kubelet rotates) or a CI OIDC token.
func subjectToken(s settings) (string, error) {
	if s.tokenFile != "" {
		b, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return "", fmt.Errorf("cannot read FLOWGATE_SUBJECT_TOKEN_FILE: %w", err)
		}
		token := strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("FLOWGATE_SUBJECT_TOKEN_FILE %s is empty", s.tokenFile)
		}
		return token, nil
	}
	return s.ciToken, nil
}

// keepFresh re-exchanges the credential at about 2/3 of its remaining lifetime (with jitter),
// retries with backoff while it is still valid, and returns an error once it has expired.
// A chain of refreshes ends after the gateway's mint.max_session (default 12 h) with
// invalid_grant: then only a new subject token helps.
func (c *credentials) keepFresh(ctx context.Context, s settings) error {
	for {
		token, expiresAt := c.snapshot()
		remaining := time.Until(expiresAt)
		delay := time.Duration(float64(remaining) * (0.6 + 0.1*rand.Float64()))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(delay, time.Second)):
		}

		backoff := time.Second
		for {
			err := c.exchange(ctx, token)
			var refused *exchangeError
			if err != nil && errors.As(err, &refused) && refused.oauthError == "invalid_grant" && s.tokenFile != "" {
				// Start over from the projected token file (the kubelet rotates it).
				if fresh, ferr := subjectToken(s); ferr == nil {
					err = c.exchange(ctx, fresh)
				}
			}
			if err == nil {
				_, exp := c.snapshot()
				log.Printf("credential refreshed; valid for %s", time.Until(exp).Round(time.Second))
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			left := time.Until(expiresAt)
			if left <= 0 {
				return fmt.Errorf("flowgate credential expired: %w", err)
			}
			log.Printf("credential refresh failed (%v); %s of validity left", err, left.Round(time.Second))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(min(backoff, left)):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}
