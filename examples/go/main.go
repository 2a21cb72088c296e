// Command producer publishes send jobs to send-worker the safe way, with
// amqp091-go: one appointment reminder by SMS to each number given.
//
// Every job is a Telnyx POST /v2/messages body, published with
//
//   - publisher confirms (Channel.Confirm, PublishWithDeferredConfirmWithContext
//     and Wait): a publish counts only once the broker has acked it;
//   - mandatory: a message no queue takes (topology not declared, wrong
//     routing key) comes back on NotifyReturn instead of vanishing;
//   - a persistent message, content type application/json, the job id as
//     MessageId, and a Timestamp.
//
// A nacked or returned publish is retried with a jittered backoff, and the
// connection is re-opened if it broke. The job id is chosen once, before the
// retries, so a retry is the same job.
//
// Usage:
//
//	go run . +15559876543 [+15559876544 ...]
//
// Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
// SEND_WORKER_EXCHANGE (messages), SEND_WORKER_ROUTING_KEY (send),
// REMINDER_FROM (+15551234567), PUBLISH_ATTEMPTS (5). It prints
// "published <job id> to <number>" for each job; the exit status is 1 if one
// could not be published.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mathrand "math/rand"
	"os"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Producer holds one confirm-mode channel.
type Producer struct {
	url, exchange, routingKey string
	attempts                  int

	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
}

func (p *Producer) open() error {
	conn, err := amqp.Dial(p.url)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return err
	}
	// Publisher confirms: every publish is acked (or nacked) by the broker.
	if err := ch.Confirm(false); err != nil {
		conn.Close()
		return err
	}
	p.conn, p.ch = conn, ch
	// Returned (unroutable) mandatory messages arrive here, before their ack.
	p.returns = ch.NotifyReturn(make(chan amqp.Return, 64))
	return nil
}

// Close the connection, if any.
func (p *Producer) Close() {
	if p.conn != nil && !p.conn.IsClosed() {
		p.conn.Close()
	}
	p.conn, p.ch = nil, nil
}

// returned reports whether the message with id jobID came back.
func (p *Producer) returned(jobID string) bool {
	found := false
	for {
		select {
		case r := <-p.returns:
			if r.MessageId == jobID {
				found = true
			}
		default:
			return found
		}
	}
}

// Publish one job and wait for the broker to confirm it, retrying a nacked
// or returned publish and a broken connection.
func (p *Producer) Publish(ctx context.Context, jobID string, body any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	msg := amqp.Publishing{
		MessageId:    jobID, // the job id: the worker's key for the job
		DeliveryMode: amqp.Persistent,
		ContentType:  "application/json",
		Timestamp:    time.Now(),
		Body:         payload,
	}
	reason := ""
	for attempt := 1; attempt <= p.attempts; attempt++ {
		if attempt > 1 {
			backoff := time.Duration(float64(200*time.Millisecond) * float64(int(1)<<(attempt-2)) * (0.5 + mathrand.Float64()))
			time.Sleep(backoff)
		}
		if p.ch == nil || p.ch.IsClosed() {
			p.Close()
			if err := p.open(); err != nil {
				reason = "cannot connect: " + err.Error()
				continue
			}
		}
		confirm, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.exchange, p.routingKey, true, false, msg)
		if err != nil {
			reason = "publish failed: " + err.Error()
			p.Close()
			continue
		}
		acked := confirm.Wait()
		switch {
		case p.returned(jobID):
			reason = fmt.Sprintf("unroutable: no queue is bound to %q with %q (is the worker's topology declared?)", p.exchange, p.routingKey)
		case !acked:
			reason = "nacked: the broker refused the message (the work queue may be full), or the channel closed"
		default:
			return nil // confirmed: the broker has it
		}
	}
	return fmt.Errorf("job %s: %s (after %d attempts)", jobID, reason, p.attempts)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func newJobID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // the OS random source failed: nothing sensible is left to do
	}
	return "reminder-" + hex.EncodeToString(b)
}

func main() {
	numbers := os.Args[1:]
	if len(numbers) == 0 {
		fmt.Fprintln(os.Stderr, "usage: producer +15559876543 [+15559876544 ...]")
		os.Exit(2)
	}
	for _, n := range numbers {
		if !strings.HasPrefix(n, "+") {
			fmt.Fprintf(os.Stderr, "not an E.164 number: %q\n", n)
			os.Exit(2)
		}
	}
	attempts, err := strconv.Atoi(env("PUBLISH_ATTEMPTS", "5"))
	if err != nil || attempts < 1 {
		attempts = 5
	}
	p := &Producer{
		url:        env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
		exchange:   env("SEND_WORKER_EXCHANGE", "messages"),
		routingKey: env("SEND_WORKER_ROUTING_KEY", "send"),
		attempts:   attempts,
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, to := range numbers {
		jobID := newJobID()
		body := map[string]string{
			"from": env("REMINDER_FROM", "+15551234567"),
			"to":   to,
			"text": "Reminder: your appointment is tomorrow at 10:00. Reply STOP to opt out.",
		}
		if err := p.Publish(ctx, jobID, body); err != nil {
			fmt.Fprintln(os.Stderr, "producer:", err)
			p.Close()
			os.Exit(1)
		}
		fmt.Printf("published %s to %s\n", jobID, to)
	}
}
