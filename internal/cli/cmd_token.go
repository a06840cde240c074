package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferry-project/ferry/internal/auth"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/service"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func newTokenCommand(g *Globals) *cobra.Command {
	var r remoteOptions
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens",
		Long: `API tokens carry a role: viewer (read only), operator (everything but tokens
and site credentials) or admin (everything). A token is shown once, when it
is created; the server keeps only its SHA-256 hash.`,
	}
	r.add(cmd)
	cmd.AddCommand(newTokenCreateCommand(g, &r), newTokenListCommand(g, &r), newTokenRevokeCommand(g, &r))
	return cmd
}

func newTokenCreateCommand(g *Globals, r *remoteOptions) *cobra.Command {
	var role string
	var bootstrap bool
	var data dataOptions
	cmd := &cobra.Command{
		Use:   "create NAME --role viewer|operator|admin",
		Short: "Create a token and print it (once)",
		Long: `Create a token through the server. With --bootstrap, create an admin token
directly in the data directory (or --database), without a server or a
token: for a first start, or when every admin token is lost.`,
		Example: `  ferry token create ci --role viewer
  ferry token create rescue --bootstrap --data /var/lib/ferry`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bootstrap {
				if role != "" && role != string(auth.Admin) {
					return fmt.Errorf("--bootstrap creates admin tokens: %w", errs.ErrInvalidArgument)
				}
				return bootstrapToken(cmd.Context(), g, data, args[0])
			}
			rl, err := auth.ParseRole(role)
			if err != nil {
				return err
			}
			c, err := r.client()
			if err != nil {
				return err
			}
			tok, err := c.CreateToken(cmd.Context(), args[0], rl)
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, tok)
			}
			fmt.Fprintf(g.Stderr, "token %s (%s, role %s) created; it is shown only now:\n", tok.Name, tok.ID, tok.Role)
			fmt.Fprintln(g.Stdout, tok.Secret)
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "viewer, operator or admin")
	cmd.Flags().BoolVar(&bootstrap, "bootstrap", false, "create an admin token offline, in the data directory")
	data.add(cmd)
	return cmd
}

func bootstrapToken(ctx context.Context, g *Globals, data dataOptions, name string) error {
	st, _, err := data.open(ctx, g)
	if err != nil {
		return err
	}
	defer st.Close()
	tok, _, err := service.BootstrapToken(ctx, st, name, true, "ferry token create --bootstrap")
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stderr, "admin token %s (%s) created in %s; it is shown only now:\n", tok.Name, tok.ID, firstOf(data.database, data.dir))
	fmt.Fprintln(g.Stdout, tok.Secret)
	return nil
}

func newTokenListCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List tokens (never their secrets)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			list, err := c.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			if r.json() {
				return writeJSON(g.Stdout, list)
			}
			tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tREVOKED")
			for _, t := range list {
				revoked := "-"
				if !t.Revoked.IsZero() {
					revoked = t.Revoked.Local().Format("2006-01-02 15:04")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.Created.Local().Format("2006-01-02 15:04"), revoked)
			}
			return tw.Flush()
		},
	}
}

func newTokenRevokeCommand(g *Globals, r *remoteOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := r.client()
			if err != nil {
				return err
			}
			if err := c.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.Stdout, "token %s revoked\n", args[0])
			return nil
		},
	}
}
